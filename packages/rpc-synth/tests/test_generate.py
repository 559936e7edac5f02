"""generate: validity, levels and counts, visible boxes and masks, determinism, workers, shards, resume."""

from __future__ import annotations

import shutil
from collections import Counter

from rpc_metrics.io import read_instances
from rpc_synth.baskets import LEVEL_RANGES
from rpc_synth.generate import OUTPUT_JSON, generate


def test_output_is_valid_rpc_with_levels(tiny_generate, tiny_generate_config):
    TINY_GENERATE = tiny_generate_config
    data = read_instances(tiny_generate / OUTPUT_JSON, require_levels=True)
    assert len(data["images"]) == TINY_GENERATE.images
    assert Counter(im["level"] for im in data["images"]) == {"easy": 3, "medium": 3, "hard": 3}
    per_image = Counter(a["image_id"] for a in data["annotations"])
    for im in data["images"]:
        (_, c_hi), (_, n_hi) = LEVEL_RANGES[im["level"]]
        cats = {a["category_id"] for a in data["annotations"] if a["image_id"] == im["id"]}
        assert 1 <= per_image[im["id"]] <= n_hi and len(cats) <= c_hi  # hidden instances are dropped


def test_boxes_and_masks_match_visible_pixels(tiny_generate, helpers):
    data = read_instances(tiny_generate / OUTPUT_JSON)
    helpers.check_visible_boxes(data, tiny_generate / "synth2019")


def test_same_seed_same_bytes_and_workers_do_not_matter(tiny_world, tiny_poses, tiny_generate, tmp_path, helpers, tiny_generate_config):
    TINY_GENERATE = tiny_generate_config
    generate(tiny_poses, tiny_world / "train2019", tmp_path / "w2", TINY_GENERATE, workers=2, progress=False)
    assert helpers.files_bytes(tmp_path / "w2") == helpers.files_bytes(tiny_generate)


def test_shards_union_is_the_whole(tiny_world, tiny_poses, tiny_generate, tmp_path, helpers, tiny_generate_config):
    TINY_GENERATE = tiny_generate_config
    out = tmp_path / "sharded"
    assert generate(tiny_poses, tiny_world / "train2019", out, TINY_GENERATE, shard="1/2", progress=False) is None
    assert not (out / OUTPUT_JSON).exists()
    generate(tiny_poses, tiny_world / "train2019", out, TINY_GENERATE, shard="0/2", progress=False)
    assert helpers.files_bytes(out) == helpers.files_bytes(tiny_generate)


def test_resume_after_interruption(tiny_world, tiny_poses, tiny_generate, tmp_path, helpers, tiny_generate_config):
    TINY_GENERATE = tiny_generate_config
    out = tmp_path / "resumed"
    shutil.copytree(tiny_generate, out)
    (out / OUTPUT_JSON).unlink()
    for name in ("000002.json", "000007.json"):
        (out / "parts" / name).unlink()  # as if killed before these images were recorded
    (out / "synth2019" / "synth_000007.jpg").unlink()
    generate(tiny_poses, tiny_world / "train2019", out, TINY_GENERATE, progress=False)
    assert helpers.files_bytes(out) == helpers.files_bytes(tiny_generate)


def test_other_seed_other_images(tiny_world, tiny_poses, tiny_generate, tmp_path, tiny_generate_config):
    TINY_GENERATE = tiny_generate_config
    config = TINY_GENERATE.__class__(**{**TINY_GENERATE.__dict__, "seed": 99, "images": 1})
    generate(tiny_poses, tiny_world / "train2019", tmp_path / "s", config, progress=False)
    assert (tmp_path / "s/synth2019/synth_000001.jpg").read_bytes() != (
        tiny_generate / "synth2019/synth_000001.jpg").read_bytes()


def test_squash_sprite_foreshortens_one_axis():
    import numpy as np
    import pytest

    from rpc_synth.compose import squash_sprite
    from rpc_synth.views import Sprite

    rng = np.random.default_rng(0)
    alpha = np.zeros((40, 60), np.float32)
    alpha[5:35, 10:50] = 1.0
    image = np.zeros((40, 60, 3), np.uint8)
    image[alpha > 0] = (200, 40, 90)
    image[alpha == 0] = rng.integers(0, 255, ((alpha == 0).sum(), 3))  # colour outside the mask must not leak
    sprite = Sprite(image, alpha)
    for factor in (0.3, 0.5, 0.77):
        for axis, shape in (("x", (40, round(60 * factor))), ("y", (round(40 * factor), 60))):
            out = squash_sprite(sprite, factor, axis)
            assert out.alpha.shape == shape
            assert abs(out.alpha.sum() - alpha.sum() * factor) <= 0.02 * alpha.sum()
            inside = out.alpha > 0.05
            assert np.abs(out.image[inside].astype(int) - (200, 40, 90)).max() <= 2
        # the default axis is y, the camera's elevation; the other axis keeps its extent
        assert squash_sprite(sprite, factor).alpha.shape == (round(40 * factor), 60)
    assert squash_sprite(sprite, 1.0) is sprite
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="squash factor"):
            squash_sprite(sprite, bad)
    with pytest.raises(ValueError, match="squash axis"):
        squash_sprite(sprite, 0.5, "z")


def test_squash_changes_instances_deterministically_and_off_keeps_old_settings(
        tiny_world, tiny_poses, tiny_generate, tmp_path, helpers, tiny_generate_config):
    import json

    import pytest

    base = tiny_generate_config
    config = base.__class__(**{**base.__dict__, "squash": 1.0, "squash_min": 0.3})
    runs = [generate(tiny_poses, tiny_world / "train2019", tmp_path / f"q{k}", config, progress=False) for k in (0, 1)]
    assert helpers.files_bytes(tmp_path / "q0") == helpers.files_bytes(tmp_path / "q1")
    helpers.check_visible_boxes(runs[0], tmp_path / "q0" / "synth2019")

    def fill(data):  # share of the box the visible mask covers, over all instances
        return sum(a["area"] for a in data["annotations"]) / sum(a["bbox"][2] * a["bbox"][3] for a in data["annotations"])

    plain = read_instances(tiny_generate / OUTPUT_JSON)
    assert fill(runs[0]) < fill(plain)  # thinner products fill less of their (axis-aligned) boxes
    written = json.loads((tmp_path / "q0" / "generate.json").read_text())["config"]
    assert written["squash"] == 1.0 and written["squash_axis"] == "y"
    assert "squash" not in json.loads((tiny_generate / "generate.json").read_text())["config"]
    with pytest.raises(ValueError, match="squash"):
        base.__class__(**{**base.__dict__, "squash": 1.5})
    with pytest.raises(ValueError, match="squash_axis"):
        base.__class__(**{**base.__dict__, "squash": 0.5, "squash_axis": "z"})
