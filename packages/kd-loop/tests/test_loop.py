import json
import os
import subprocess
import sys

import pytest

from kd_loop import load_config, run_loop
from kd_loop.summary import format_table, round_rows
from rpc_metrics.io import read_instances, read_results, write_json

ARTEFACTS = ("predictions.json", "counts.json", "pseudo_labels.json", "selection.json", "metrics.json", "mix.json",
             *(f"{split}_{kind}.json" for split in ("val", "calibration", "test") for kind in ("predictions", "counts")))
SPLITS = ['val.instances="val_gt.json"', 'val.images="val_images"', 'calibration.instances="cal_gt.json"',
          'calibration.images="cal_images"', 'test.instances="test_gt.json"', 'test.images="test_images"']


def artefacts(workdir):
    """Every round's outputs, with the run's own folder stripped from paths so two runs compare."""
    out = {}
    for folder in sorted(workdir.glob("round_*")):
        for name in ARTEFACTS:
            if (folder / name).exists():
                out[f"{folder.name}/{name}"] = (folder / name).read_text().replace(str(workdir), "<run>")
    return out


def quiet(message):
    pass


def test_rounds_write_every_artefact(toy_world):
    # Without the fallback's minimum: the toy keeps only images whose detections agree with its counts.
    config = load_config(toy_world, ["selection.min_share=0"])
    summary = run_loop(config, log=quiet)
    run = toy_world.parent / "run"
    assert sorted(p.name for p in run.iterdir()) == ["round_000", "round_001", "round_002", "settings.json", "summary.md"]
    for r in (1, 2):
        pseudo = read_instances(run / f"round_{r:03d}" / "pseudo_labels.json")
        stats = json.loads((run / f"round_{r:03d}" / "selection.json").read_text())
        assert stats["selected_images"] == len(pseudo["images"]) > 0
        read_results(run / f"round_{r:03d}" / "predictions.json")
        # The pseudo-labelled set names its teacher (for learners that distil); the source sets have none.
        mix = json.loads((run / f"round_{r:03d}" / "mix.json").read_text())
        teacher = json.loads((run / f"round_{r - 1:03d}" / "fit.json").read_text())["checkpoint"]
        assert [d.get("teacher") for d in mix["datasets"]] == [teacher] + [None] * (len(mix["datasets"]) - 1)
    metrics = [json.loads((run / f"round_{r:03d}" / "metrics.json").read_text()) for r in range(3)]
    caccs = [m["oracle"]["cacc"] for m in metrics]
    assert caccs[2] >= caccs[1] >= caccs[0]  # the toy memorizes agreeing (hence right) pseudo-labels
    assert metrics[1]["selection"]["image_precision"] > 0.5 and metrics[1]["selection"]["box_precision"] > 0.5
    assert "| 2 |" in summary.read_text()


def test_the_selection_never_sees_ground_truth(toy_world, tmp_path):
    # Run once with the true pool ground truth for reporting, once with wrong ground truth, and once with
    # labels inside the pool file itself: every selection must be identical.
    gt = json.loads((toy_world.parent / "pool_gt.json").read_text())
    wrong = {**gt, "annotations": [{**a, "category_id": 1 + a["category_id"] % 8, "bbox": [0, 0, 5, 5]}
                                   for a in gt["annotations"]]}
    write_json(wrong, toy_world.parent / "wrong_gt.json")
    unlabeled = {**gt, "annotations": []}
    write_json(unlabeled, toy_world.parent / "pool_unlabeled.json")
    runs = {}
    for name, overrides in {"true": [], "wrong": ['pool.gt="wrong_gt.json"'],
                            "nolabels": ['pool.instances="pool_unlabeled.json"', 'pool.gt=""']}.items():
        workdir = tmp_path / name
        run_loop(load_config(toy_world, overrides), workdir=workdir, log=quiet)
        runs[name] = {k: v for k, v in artefacts(workdir).items() if "metrics" not in k}
    assert runs["true"] == runs["wrong"] == runs["nolabels"]
    assert not (tmp_path / "nolabels" / "round_001" / "metrics.json").exists()


def test_resume_after_sigkill_gives_the_same_outputs(toy_world, tests_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir), os.environ.get("PYTHONPATH", "")])}
    # With every split: val, a calibration split predicted each round, a test split measured each round.
    command = [sys.executable, "-m", "kd_loop.cli", "run", str(toy_world), *SPLITS]
    killed = subprocess.run([*command, "--workdir", str(tmp_path / "resumed")], capture_output=True, text=True,
                            env={**env, "KD_TOY_KILL": "round_002/model"}, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "resumed" / "round_002" / "model" / "partial.bin").exists()
    assert not (tmp_path / "resumed" / "round_002" / "fit.json").exists()
    resumed = subprocess.run([*command, "--workdir", str(tmp_path / "resumed")], capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "[round 1] fit student: done earlier" in resumed.stderr
    straight = subprocess.run([*command, "--workdir", str(tmp_path / "straight")], capture_output=True, text=True,
                              env=env, timeout=300)
    assert straight.returncode == 0, straight.stderr
    first, second = artefacts(tmp_path / "resumed"), artefacts(tmp_path / "straight")
    assert first == second and len(first) >= 30
    assert "round_001/calibration_predictions.json" in first and "round_002/test_counts.json" in first
    assert (tmp_path / "resumed" / "summary.md").read_text() == (tmp_path / "straight" / "summary.md").read_text()


def test_transfer_metrics_with_a_val_split(toy_world):
    config = load_config(toy_world, ['val.instances="val_gt.json"', 'val.images="val_images"', "rounds=1"])
    run_loop(config, log=quiet)
    metrics = json.loads((toy_world.parent / "run" / "round_001" / "metrics.json").read_text())
    assert set(metrics) >= {"transfer", "oracle", "selection"}


def test_an_empty_selection_keeps_the_teacher_and_says_so(toy_world):
    lines = []
    summary = run_loop(load_config(toy_world, ["selection.thresholds=[1.0]", "rounds=1"]), log=lines.append)
    fit = json.loads((toy_world.parent / "run" / "round_001" / "fit.json").read_text())
    assert "teacher is kept" in fit["note"]
    loud = ("**round 1: only 0 of 30 pool images agreed (minimum 3); none added: the fallback 'closest' found no "
            "other image with enough labels**")
    text = summary.read_text()
    assert f"- {loud}" in text and "round 1 selected no pool image: its student is its teacher" in text
    assert any("!! round 1 selected no pool image" in line for line in lines)


def test_a_round_below_the_minimum_says_so_loudly(toy_world, tmp_path):
    # The toy's counts agree with its detections on 1 of its 30 images at 0.6: the minimum is ceil(0.1 x 30).
    lines = []
    summary = run_loop(load_config(toy_world, ["rounds=1"]), workdir=tmp_path / "run", log=lines.append)
    stats = json.loads((tmp_path / "run" / "round_001" / "selection.json").read_text())
    assert (stats["agreeing_images"], stats["fallback_images"], stats["min_images"], stats["fallback"]) == (1, 2, 3, "closest")
    assert stats["selected_images"] == 3 and "2 other images closest to agreement" in stats["reason"]
    loud = "**round 1: only 1 of 30 pool images agreed (minimum 3); 2 added by the fallback 'closest'**"
    assert f"- {loud}" in summary.read_text() and "| 1 | 3 (2 by fallback) |" in summary.read_text()
    assert any(line.endswith("!! " + loud.strip("*")) for line in lines)
    rows = round_rows(tmp_path / "run")
    assert rows[1]["notes"] == [loud] and loud in format_table(rows)
    # The same run with the fallback off keeps the one agreeing image, and says that too.
    run_loop(load_config(toy_world, ["rounds=1", 'selection.fallback="none"']), workdir=tmp_path / "off", log=quiet)
    assert "**round 1: only 1 of 30 pool images agreed (minimum 3); none added (fallback 'none')**" in \
        (tmp_path / "off" / "summary.md").read_text()
    run_loop(load_config(toy_world, ["rounds=1", "selection.min_share=0"]), workdir=tmp_path / "nomin", log=quiet)
    assert "**" not in (tmp_path / "nomin" / "summary.md").read_text()


class CountingToy:
    """The toy learner, counting its predict calls."""

    def __init__(self, world):
        from kdloop_toy import ToyLearner

        self.toy = ToyLearner(str(world / "candidates.json"), str(world / "view_counts.json"))
        self.fit = self.toy.fit

    def predict(self, checkpoint, pool, images, *, out_dir):
        return self.toy.predict(checkpoint, pool, images, out_dir=out_dir)

    def calls(self):
        return self.toy.predict_calls


def test_a_test_split_is_predicted_and_measured_each_round(toy_world, tmp_path):
    learner = CountingToy(toy_world.parent)
    run_loop(load_config(toy_world, SPLITS[:2] + SPLITS[4:]), workdir=tmp_path / "run", log=quiet, learner=learner)
    # Per round: pool, val (also the calibration split of the default count_scale 'auto'), test.
    assert learner.calls() == ["pool.json", "val_pool.json", "test_pool.json"] * 3
    for r in range(3):
        folder = tmp_path / "run" / f"round_{r:03d}"
        assert (folder / "test_predictions.json").is_file() and (folder / "test_counts.json").is_file()
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["test"]["transductive"] is False and set(metrics["test"]) >= {"transfer", "oracle"}
        # The test split holds the pool's images under another name: same predictions, same accuracy.
        assert metrics["test"]["oracle"] == metrics["oracle"]
    assert "test cAcc (transfer)" in (tmp_path / "run" / "summary.md").read_text()


def test_a_test_split_that_is_the_pool_reuses_its_predictions(toy_world, tmp_path):
    learner = CountingToy(toy_world.parent)
    transductive = ['test.instances="pool_gt.json"', 'test.images="pool_images"', 'pool.gt=""']
    run_loop(load_config(toy_world, transductive), workdir=tmp_path / "run", log=quiet, learner=learner)
    assert learner.calls() == ["pool.json"] * 3  # predicted once per round
    for r in range(3):
        folder = tmp_path / "run" / f"round_{r:03d}"
        assert not (folder / "test_predictions.json").exists()
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["test"]["transductive"] is True and "transfer" not in metrics["test"]
        assert "oracle" not in metrics  # no pool.gt: the pool itself is not measured


def test_the_calibration_split_is_val_unless_another_is_given(toy_world, tmp_path):
    learner = CountingToy(toy_world.parent)
    same_as_val = ['calibration.instances="val_gt.json"', 'calibration.images="val_images"', "rounds=1"]
    run_loop(load_config(toy_world, [*SPLITS[:2], *same_as_val]), workdir=tmp_path / "val", log=quiet, learner=learner)
    assert learner.calls() == ["pool.json", "val_pool.json"] * 2  # val's predictions serve, not predicted twice
    stats = json.loads((tmp_path / "val" / "round_001" / "selection.json").read_text())
    assert stats["count_calibration"]["split"] == "val" and stats["count_calibration"]["images"] == 9
    learner = CountingToy(toy_world.parent)
    run_loop(load_config(toy_world, SPLITS[2:4]), workdir=tmp_path / "cal", log=quiet, learner=learner)
    # Each round's model predicts the calibration split for the next round's selection; the last one needn't.
    assert learner.calls() == ["pool.json", "calibration_pool.json"] * 2 + ["pool.json"]
    stats = json.loads((tmp_path / "cal" / "round_002" / "selection.json").read_text())
    assert stats["count_calibration"]["split"] == "calibration" and stats["count_calibration"]["images"] == 10
    # No labelled split: 'auto' stays at 1 and says why; the instance policies use no counts.
    run_loop(load_config(toy_world, ["rounds=1"]), workdir=tmp_path / "none", log=quiet)
    stats = json.loads((tmp_path / "none" / "round_001" / "selection.json").read_text())
    assert stats["count_scale"] == 1.0 and stats["count_calibration"]["method"].startswith("not fitted")
    learner = CountingToy(toy_world.parent)
    run_loop(load_config(toy_world, [*SPLITS[2:4], "rounds=1", 'selection.policy="instance"']),
             workdir=tmp_path / "instance", log=quiet, learner=learner)
    assert learner.calls() == ["pool.json"] * 2
    assert "count_calibration" not in json.loads((tmp_path / "instance" / "round_001" / "selection.json").read_text())


@pytest.mark.parametrize(("overrides", "message"), [
    (["selection.bogus=1"], "unknown config key 'selection.bogus'; valid keys: "),
    (["selection.policy=\"magic\""], "selection.policy should be one of"),
    (["learner.path=\"nowhere.module:Nope\""], "unknown learner path 'nowhere.module:Nope'"),
    (["pool.images=\"missing_folder\""], "pool.images: dir"),
    (["rounds"], "should look like key=value"),
])
def test_config_errors_are_clear(toy_world, overrides, message):
    from kd_loop import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run_loop(load_config(toy_world, overrides), log=quiet)
