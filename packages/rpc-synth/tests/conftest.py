"""One tiny mini world, its masks, poses and a small generate run, built once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rpc_metrics.io import decode_mask
from rpc_synth.generate import GenerateConfig, generate
from rpc_synth.masks import build_masks
from rpc_synth.poses import prune_poses
from rpc_synth.world import WorldConfig, build_world

TINY = WorldConfig(seed=3, skus=10, lookalike_pairs=3, azimuths=4, exemplar_size=200, checkout_size=224, pool_images=3,
                   val_images=6, test_images=6)
TINY_GENERATE = GenerateConfig(images=9, size=192, seed=5)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build_world(out, TINY, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_masks(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    build_masks(tiny_world / "instances_train2019.json", tiny_world / "train2019", out, keep_coarse=True, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_poses(tiny_masks):
    path = tiny_masks / "poses.json"
    prune_poses(tiny_masks / "instances_masks.json", path)
    return path


@pytest.fixture(scope="session")
def tiny_generate(tiny_world, tiny_poses, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(tiny_poses, tiny_world / "train2019", out, TINY_GENERATE, progress=False)
    return out


def _files_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), to compare two runs byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_visible_boxes(dataset: dict, image_dir: Path) -> None:
    """Boxes inside their image, equal to the tight box of their RLE mask; point_xy at the box centre."""
    images = {im["id"]: im for im in dataset["images"]}
    for ann in dataset["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"], ann["bbox"]
        mask = decode_mask(ann["segmentation"])
        assert mask.shape == (im["height"], im["width"])
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] == [x, y, w, h]
        assert ann["area"] == mask.sum()
        assert ann["point_xy"] == [x + w / 2, y + h / 2]
        assert ann["iscrowd"] == 0
    for im in dataset["images"]:
        pixels = cv2.imread(str(image_dir / im["file_name"]))
        assert pixels.shape[:2] == (im["height"], im["width"])


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def helpers():
    """``files_bytes``, ``check_visible_boxes`` and ``load`` for the test modules."""
    return type("Helpers", (), {"files_bytes": staticmethod(_files_bytes),
                                "check_visible_boxes": staticmethod(_check_visible_boxes),
                                "load": staticmethod(_load)})


@pytest.fixture(scope="session")
def tiny_config():
    return TINY


@pytest.fixture(scope="session")
def tiny_generate_config():
    return TINY_GENERATE
