"""Backbone pretraining on exemplar crops, and loading its weights into the detector's backbone."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from dpsnet.backbone import build_backbone
from dpsnet.cli import main
from dpsnet.data import camera_effects
from dpsnet.pretrain import augment_crops, exemplar_crops


def test_exemplar_crops_and_augmentation(world):
    crops, labels, category_ids = exemplar_crops(world / "instances.json", world / "images", 32)
    anns = [a for a in json.loads((world / "instances.json").read_text())["annotations"] if not a["iscrowd"]]
    # A crop per product box (not per image), crowd regions left out, labels in category order.
    assert crops.shape == (len(anns), 32, 32, 3) and crops.dtype == np.uint8 and category_ids == [3, 5, 9]
    assert sorted(labels.tolist()) == sorted([3, 5, 9].index(a["category_id"]) for a in anns)
    batch = augment_crops(crops[:3], np.random.default_rng(0))
    assert batch.shape == (3, 3, 32, 32) and 0 <= float(batch.min()) <= float(batch.max()) <= 1


def test_camera_effects_deterministic_and_bounded():
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, size=(24, 24, 3)).astype(np.float32)
    for seed in range(3):
        a = camera_effects(image, np.random.default_rng(seed))
        b = camera_effects(image, np.random.default_rng(seed))
        assert a.dtype == np.float32 and a.shape == image.shape and np.array_equal(a, b)
        assert 0 <= float(a.min()) <= float(a.max()) <= 1
        # a degradation, not a new picture: the result stays close to the input (JPEG + noise + a cast)
        assert 0 < float(np.abs(a - image).mean()) < 0.25
    crops = (image[None].repeat(4, 0) * 255).astype(np.uint8)
    # camera=0 draws nothing more from the generator: the batch is the one made without the option
    plain = augment_crops(crops, np.random.default_rng(1))
    assert torch.equal(plain, augment_crops(crops, np.random.default_rng(1), camera=0.0))
    assert not torch.equal(plain, augment_crops(crops, np.random.default_rng(1), camera=1.0))


def test_pretrain_cli_rejects_bad_camera_share(world, tmp_path):
    res = CliRunner().invoke(main, ["pretrain", "--instances", str(world / "instances.json"), "--images",
                                    str(world / "images"), "--out", str(tmp_path / "w.pt"), "--camera", "1.5"])
    assert res.exit_code == 2 and "--camera" in res.output and not (tmp_path / "w.pt").exists()


def test_pretrain_cli_writes_loadable_weights(world, tmp_path):
    res = CliRunner().invoke(main, ["pretrain", "--instances", str(world / "instances.json"), "--images",
                                    str(world / "images"), "--out", str(tmp_path / "w.pt"), "--size", "32",
                                    "--channels", "8,16,16,32", "--steps", "2", "--batch-size", "4",
                                    "--camera", "0.5"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "w.pt.json").read_text())
    assert summary["steps"] == 2 and summary["classes"] == 3 and summary["camera"] == 0.5
    backbone = build_backbone("small", weights=tmp_path / "w.pt", small_channels=(8, 16, 16, 32), out_channels=16)
    saved = torch.load(tmp_path / "w.pt", weights_only=True)["model"]
    assert torch.equal(backbone.body.stem[0][0].weight, saved["stem.0.0.weight"])
