"""Masks and pose pruning measured on the tiny mini world, resumption, and the RPC train example as input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rpc_metrics.io import read_instances
from rpc_synth.generate import GenerateConfig, generate
from rpc_synth.masks import build_masks, exemplar_masks, fill_holes
from rpc_synth.poses import pose_ratios, prune_poses
from rpc_synth.quality import mask_quality, pose_quality

EXAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "rpc-format"


def test_mask_iou_target_and_refinement_helps(tiny_world, tiny_masks):
    report = mask_quality(tiny_world, tiny_masks)
    assert report["fine_mean_iou"] >= 0.90
    assert report["fine_mean_iou"] >= report["coarse_mean_iou"] + 0.01


def test_masks_json_is_valid_with_rle_and_scores(tiny_masks):
    data = read_instances(tiny_masks / "instances_masks.json")
    for ann in data["annotations"]:
        assert ann["segmentation"]["size"] and 0.0 <= ann["mask_score"] <= 1.0
        assert (tiny_masks / ann["mask_file"]).is_file()


def test_pose_pruning_drops_degenerate_views_keeps_good_ones(tiny_world, tiny_poses):
    report = pose_quality(tiny_world, tiny_poses)
    assert report["degenerate"] > 0
    assert report["degenerate_dropped"] >= 0.9 * report["degenerate"]
    assert report["good_lost"] <= 0.05 * report["good"]


def test_pose_ratio_rule():
    anns = [{"id": 1, "category_id": 1, "mask_area": 100}, {"id": 2, "category_id": 1, "mask_area": 45},
            {"id": 3, "category_id": 2, "mask_area": 10}]
    assert pose_ratios(anns) == {1: 1.0, 2: 0.45, 3: 1.0}
    data = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{**a, "image_id": a["id"], "bbox": [0, 0, 1, 1]} for a in anns]}
    kept = {a["id"]: a["pose_kept"] for a in prune_poses(data)["annotations"]}
    assert kept == {1: True, 2: False, 3: True}  # strictly above the threshold


def test_masks_resume_gives_the_same_output(tiny_world, tiny_masks, tmp_path):
    partial = tmp_path / "m"
    build_masks(tiny_world / "instances_train2019.json", tiny_world / "train2019", partial, keep_coarse=True,
                progress=False)
    parts = sorted((partial / "parts").glob("*.json"))
    for p in parts[: len(parts) // 2]:
        p.unlink()
    (partial / "instances_masks.json").unlink()
    build_masks(tiny_world / "instances_train2019.json", tiny_world / "train2019", partial, workers=2,
                keep_coarse=True, progress=False)
    assert (partial / "instances_masks.json").read_bytes() == (tiny_masks / "instances_masks.json").read_bytes()


def test_fill_holes():
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring)[4, 4] and not fill_holes(ring)[0, 0]


def test_mask_of_a_plain_rectangle():
    image = np.full((120, 160, 3), 220, np.uint8)
    image[30:90, 50:110] = (40, 80, 160)
    result = exemplar_masks(image, [50, 30, 60, 60])
    truth = np.zeros((120, 160), bool)
    truth[30:90, 50:110] = True
    fine = result.full("fine", (120, 160))
    assert (fine & truth).sum() / (fine | truth).sum() > 0.97


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="shared/rpc-format examples not present")
def test_rpc_train_example_runs_through_the_chain(tmp_path):
    """The real schema (2592x1944 photos, 200 categories, one annotated SKU) through masks, poses, generate."""
    example = json.loads((EXAMPLES / "instances_train2019.example.json").read_text())
    photos = tmp_path / "train2019"
    photos.mkdir()
    for im, ann in zip(example["images"], example["annotations"], strict=True):
        canvas = np.full((im["height"], im["width"], 3), 215, np.uint8)
        x, y, w, h = (int(v) for v in ann["bbox"])
        cv2.ellipse(canvas, (x + w // 2, y + h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, (30, 90, 170), -1)
        cv2.imwrite(str(photos / im["file_name"]), canvas)
    build_masks(EXAMPLES / "instances_train2019.example.json", photos, tmp_path / "masks", progress=False)
    poses = prune_poses(tmp_path / "masks" / "instances_masks.json", tmp_path / "poses.json")
    assert {a["__raw_Chinese_name_df"][0]["sku_name"] for a in [poses]} == {"sku_1"}  # unknown keys kept
    config = GenerateConfig(images=2, size=256, levels=("easy",), ranges="easy=1-1/1-3")
    data = generate(tmp_path / "poses.json", photos, tmp_path / "synth", config, progress=False)
    assert len(data["images"]) == 2 and {a["category_id"] for a in data["annotations"]} <= {17}
