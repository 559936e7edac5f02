import json
import os
import subprocess
import sys

import pytest

from kd_loop import load_config, run_loop
from rpc_metrics.io import read_instances, read_results, write_json

ARTEFACTS = ("predictions.json", "counts.json", "pseudo_labels.json", "selection.json", "metrics.json", "mix.json")


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
    config = load_config(toy_world)
    summary = run_loop(config, log=quiet)
    run = toy_world.parent / "run"
    assert sorted(p.name for p in run.iterdir()) == ["round_000", "round_001", "round_002", "summary.md"]
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
    command = [sys.executable, "-m", "kd_loop.cli", "run", str(toy_world)]
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
    assert first == second and len(first) >= 14


def test_transfer_metrics_with_a_val_split(toy_world):
    config = load_config(toy_world, ['val.instances="val_gt.json"', 'val.images="val_images"', "rounds=1"])
    run_loop(config, log=quiet)
    metrics = json.loads((toy_world.parent / "run" / "round_001" / "metrics.json").read_text())
    assert set(metrics) >= {"transfer", "oracle", "selection"}


def test_an_empty_selection_keeps_the_teacher(toy_world):
    run_loop(load_config(toy_world, ["selection.thresholds=[1.5]", "rounds=1"]), log=quiet)
    fit = json.loads((toy_world.parent / "run" / "round_001" / "fit.json").read_text())
    assert "teacher is kept" in fit["note"]


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
