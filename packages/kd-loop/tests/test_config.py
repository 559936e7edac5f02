"""The new keys' checks: each error names its key and what it expects."""

import json

import pytest

from kd_loop import ConfigError, load_config, run_loop
from rpc_metrics.io import write_json


@pytest.mark.parametrize(("overrides", "message"), [
    (["selection.count_scale=0"], "selection.count_scale should be 'auto', 'none' or a positive number, got 0"),
    (["selection.count_scale=-1.5"], "selection.count_scale should be"),
    (["selection.count_scale=nan"], "selection.count_scale should be"),
    (["selection.count_scale=inf"], "selection.count_scale should be"),
    (["selection.count_scale=true"], "selection.count_scale should be"),
    (["selection.count_scale=sometimes"], "got 'sometimes'"),
    (["selection.min_share=1.5"], r"selection.min_share should be a number in \[0, 1\] \(0: no minimum\), got 1.5"),
    (["selection.min_share=nan"], "selection.min_share should be a number in"),
    (['selection.min_share="10%"'], "selection.min_share should be a number in"),
    (["selection.fallback=nearest"], "selection.fallback should be 'closest' or 'none', got 'nearest'"),
    (["selection.min_boxes=1.5"], "selection.min_boxes should be an integer >= 0"),
    (["selection.target_precision=nan"], "selection.target_precision should be a number in"),
    (["mix.source_ratio=nan"], "mix.source_ratio should be a number >= 0"),
    (["selection.thresholds=[0.5, nan]"], "selection.thresholds should be a non-empty list of scores in"),
    (['calibration.instances="cal_gt.json"'], "calibration.instances and calibration.images go together"),
    (['test.images="test_images"'], "test.instances and test.images go together"),
])
def test_bad_values_name_their_key(toy_world, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(toy_world, overrides)


def test_target_precision_names_the_missing_labelled_split(toy_world):
    with pytest.raises(ConfigError, match=r"set val\.instances and val\.images \(or calibration\.instances and "
                                          r"calibration\.images\)"):
        load_config(toy_world, ["selection.target_precision=0.9"])
    # A calibration split alone is enough.
    load_config(toy_world, ["selection.target_precision=0.9", 'calibration.instances="cal_gt.json"',
                            'calibration.images="cal_images"'])


def test_good_values_pass(toy_world):
    for overrides in (["selection.count_scale=none"], ["selection.count_scale=0.6"], ["selection.count_scale=2"],
                      ["selection.min_share=0", 'selection.fallback="none"'], ["selection.min_share=1"]):
        assert load_config(toy_world, overrides)


def test_a_labelled_split_without_labels_or_files_is_refused_before_the_run(toy_world, tmp_path):
    unlabeled = ['calibration.instances="pool_unlabeled.json"', 'calibration.images="cal_images"']
    gt = json.loads((toy_world.parent / "pool_gt.json").read_text())
    write_json({**gt, "annotations": []}, toy_world.parent / "pool_unlabeled.json")
    with pytest.raises(ConfigError, match=r"calibration\.instances: .* has no annotations; the calibration split "
                                          r"needs ground truth"):
        run_loop(load_config(toy_world, unlabeled), workdir=tmp_path / "run", log=print)
    with pytest.raises(ConfigError, match=r"test\.images: dir .* not found"):
        run_loop(load_config(toy_world, ['test.instances="test_gt.json"', 'test.images="nowhere"']),
                 workdir=tmp_path / "run", log=print)
    assert not (tmp_path / "run").exists()


def test_the_pools_own_labels_cannot_calibrate_the_selection(toy_world, tmp_path):
    pool_as_val = ['val.instances="pool_gt.json"', 'val.images="pool_images"']
    for overrides in ([], ["selection.target_precision=0.9", "selection.count_scale=none"]):
        with pytest.raises(ConfigError, match=r"val\.instances is the pool's own file"):
            run_loop(load_config(toy_world, [*pool_as_val, *overrides]), workdir=tmp_path / "run", log=print)
    # Reporting only (no calibration): allowed, as before.
    run_loop(load_config(toy_world, [*pool_as_val, "selection.count_scale=none", "rounds=0"]),
             workdir=tmp_path / "run", log=print)
