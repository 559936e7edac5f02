"""fit_generate_config: recovers the settings a split was made with, determinism, feasible ranges, settings files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rpc_metrics.io import read_instances
from rpc_synth.fit import (
    fit_generate_config,
    fitted_ranges,
    fitted_size,
    pick_max_iou,
    read_settings,
    settings_document,
)
from rpc_synth.generate import OUTPUT_JSON, GenerateConfig, InputError, compose_image, generate, load_bank


def _split_made_with(tiny_world, tiny_poses, config):
    """A labelled 'checkout' split synthesized in memory with a known GenerateConfig."""
    bank = load_bank(tiny_poses, tiny_world / "train2019")
    images, annotations = [], []
    for i in range(config.images):
        _, level, anns = compose_image(bank, config, i)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": config.size, "height": config.size, "level": level})
        annotations += [{**a, "id": len(annotations) + k + 1, "image_id": i + 1} for k, a in enumerate(anns)]
    return {"images": images, "annotations": annotations, "categories": bank.categories}


@pytest.mark.parametrize("scale, max_iou", [((0.8, 1.0), 0.5), ((0.35, 0.45), 0.15)])
def test_fit_recovers_known_settings(tiny_world, tiny_poses, scale, max_iou):
    """From the default base, the fit lands near the settings the split was made with (another seed).

    Tolerances: the scale centre within 10% (the median product size of a 60-image split and of a 30-image probe
    each vary by about 3% between seeds, so their ratio by about 4%: 10% is 2.5 sigma); the probe's overlap
    within 0.015 of the split's; max_iou within 0.15 (above about 0.5 random placement rarely reaches the limit,
    so the probe's overlap barely changes there and nearby values fit equally well).
    """
    known = GenerateConfig(images=60, size=192, seed=7, scale=scale, max_iou=max_iou)
    split = _split_made_with(tiny_world, tiny_poses, known)
    config, report = fit_generate_config(tiny_poses, tiny_world / "train2019", split, probe_images=30)
    assert config.size == 192
    assert np.mean(config.scale) == pytest.approx(np.mean(scale), rel=0.10)
    assert config.scale[0] <= scale[0] * 1.1 and config.scale[1] >= scale[1] * 0.9  # the range is at least as wide
    assert abs(config.max_iou - max_iou) <= 0.15
    assert abs(report["probe"]["max_iou"] - report["checkout"]["max_iou"]) <= 0.015
    assert config.levels == ("easy", "medium", "hard")
    json.dumps(report, allow_nan=False)  # JSON-able


def test_fit_is_deterministic_and_seeded(tiny_world, tiny_poses):
    split = tiny_world / "instances_val2019.json"
    kwargs = dict(probe_images=6, iterations=1, iou_grid=(0.2, 0.4))
    a = fit_generate_config(tiny_poses, tiny_world / "train2019", split, seed=1, **kwargs)
    b = fit_generate_config(tiny_poses, tiny_world / "train2019", split, seed=1, **kwargs)
    c = fit_generate_config(tiny_poses, tiny_world / "train2019", split, seed=2, **kwargs)
    assert a[0] == b[0] and json.dumps(a[1]) == json.dumps(b[1])
    assert a[1]["scale_steps"] != c[1]["scale_steps"]
    assert a[0].size == 224 and set(a[1]) >= {"chosen", "checkout", "probe", "scale_steps", "max_iou_grid"}


def test_fitted_size_and_ranges():
    assert fitted_size(1815) == 1824 and fitted_size(10) == 64 and fitted_size(9000) == 4096
    levels = {"hard": {"instances": {"min": 15, "max": 20}, "categories": {"min": 8, "max": 12}},
              "easy": {"instances": {"min": 0, "max": 2}, "categories": {"min": 0, "max": 3}}}
    # ordered as RPC, categories within the SKUs on hand and never above the instances, at least one instance
    assert fitted_ranges(levels, n_categories=9) == (("easy", "hard"), "easy=1-2/1-2,hard=8-9/15-20")
    pooled = {"all": {"instances": {"min": 3, "max": 9}, "categories": None}}
    assert fitted_ranges(pooled, n_categories=24) == (("all",), "all=2-5/3-9")  # unknown categories: half


def test_pick_max_iou_interpolates():
    grid = [{"max_iou": 0.1, "probe_max_iou": 0.02}, {"max_iou": 0.2, "probe_max_iou": 0.04},
            {"max_iou": 0.3, "probe_max_iou": 0.08}]
    assert pick_max_iou(grid, 0.03) == 0.15
    assert pick_max_iou(grid, 0.07) == 0.28
    assert pick_max_iou(grid, 0.5) == 0.3 and pick_max_iou(grid, 0.0) == 0.1  # beyond the grid: its end


def test_generate_with_a_pooled_level(tiny_world, tiny_poses, tmp_path):
    """An unlabeled fit's single level 'all' is no RPC level: its images carry none and stay valid RPC."""
    config = GenerateConfig(images=3, size=128, levels=("all",), ranges="all=2-4/3-6", scale=(0.3, 0.4))
    generate(tiny_poses, tiny_world / "train2019", tmp_path, config, progress=False)
    data = read_instances(tmp_path / OUTPUT_JSON)
    assert all("level" not in im for im in data["images"])
    assert all(2 <= sum(a["image_id"] == im["id"] for a in data["annotations"]) <= 6 for im in data["images"])


def test_settings_round_trip_and_errors(tmp_path):
    config = GenerateConfig(size=256, levels=("all",), ranges="all=2-4/3-6", scale=(0.3, 0.4), max_iou=0.25)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(settings_document(config, {"chosen": {}})))
    assert read_settings(path) == {"size": 256, "levels": ("all",), "ranges": "all=2-4/3-6", "scale": (0.3, 0.4),
                                   "max_iou": 0.25}
    for bad, message in [({"generate": {"scael": [1, 2]}}, "unknown settings"), ({"generate": {"size": 10}}, "size"),
                         ([1, 2], "expected an object"), ({"generate": {"scale": "big"}}, "generate")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            read_settings(path)


def test_fit_refuses_unusable_checkout(tiny_world, tiny_poses, tmp_path):
    pool = tiny_world / "instances_pool2019.json"
    with pytest.raises(InputError, match="no product annotations"):
        fit_generate_config(tiny_poses, tiny_world / "train2019", pool)
    with pytest.raises(InputError, match="probe_images"):
        fit_generate_config(tiny_poses, tiny_world / "train2019", tiny_world / "instances_val2019.json", probe_images=2)
