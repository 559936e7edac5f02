"""dpsnet.kd:Learner, the kd-loop adapter: fit from a teacher, predict a pool, one loop round."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dpsnet.kd import Learner
from rpc_metrics.io import read_counts, read_instances, read_pool, read_results, write_instances

from .conftest import tiny_overrides


@dataclass(frozen=True)
class Spec:
    instances: Path
    images: Path
    weight: float = 1.0


def tiny_learner(world, **extra):
    overrides = {k: v for k, v in tiny_overrides(world, **extra).items() if not k.startswith("data.train")}
    return Learner("cpu-small", {**overrides, "train.threads": 1}, batch_size=2, device="cpu")


def test_fit_predict_and_student_from_teacher(world, tmp_path):
    learner = tiny_learner(world)
    teacher = learner.fit([Spec(world / "instances.json", world / "images")], init=None, out_dir=tmp_path / "t",
                          seed=0)
    assert teacher == tmp_path / "t" / "last.pt" and teacher.is_file()
    prediction = learner.predict(teacher, world / "pool.json", world / "images", out_dir=tmp_path / "p")
    pool = read_pool(world / "pool.json")
    read_results(prediction.results, gt=pool)
    counts = read_counts(prediction.counts, pool=pool)
    assert counts["count_classes"] == "object"  # the preset's one counting class
    assert all(set(e["counts"]) == {"object"} for e in counts["images"])
    # With a zero learning rate the student ends exactly where its teacher started it.
    frozen = tiny_learner(world, **{"train.lr": 0.0})
    student = frozen.fit([Spec(world / "instances.json", world / "images")], init=teacher,
                         out_dir=tmp_path / "s", seed=1)
    a = torch.load(teacher, weights_only=True)["model"]
    b = torch.load(student, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if not k.endswith("num_batches_tracked") and "running" not in k)


def test_a_selection_smaller_than_a_batch_still_trains(world, tmp_path):
    one = read_instances(world / "instances.json")
    first = one["images"][0]["id"]
    write_instances({**one, "images": one["images"][:1],
                     "annotations": [a for a in one["annotations"] if a["image_id"] == first]}, tmp_path / "one.json")
    learner = tiny_learner(world, **{"train.batch_size": 4})
    checkpoint = learner.fit([Spec(tmp_path / "one.json", world / "images")], init=None, out_dir=tmp_path / "o",
                             seed=0)
    assert torch.load(checkpoint, weights_only=True)["step"] == 2


def test_bad_overrides_fail_at_construction(world):
    from dpsnet.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.nope"):
        Learner("cpu-small", {"train.nope": 1})


@pytest.mark.slow
def test_one_kd_loop_round_with_dpsnet(world, tmp_path):
    kd_loop = pytest.importorskip("kd_loop")
    overrides = {k: v for k, v in tiny_overrides(world).items() if not k.startswith("data.train")}
    # The pool's ground truth (reporting only): the pool's images, the labelled images' annotations.
    labelled = read_instances(world / "instances.json")
    write_instances({**read_pool(world / "pool.json"), "annotations": labelled["annotations"]}, tmp_path / "gt.json")
    table = {
        "rounds": 1, "seed": 0, "workdir": str(tmp_path / "run"),
        "learner": {"path": "dpsnet.kd:Learner",
                    "kwargs": {"preset": "cpu-small", "overrides": {**overrides, "train.threads": 1},
                               "batch_size": 2, "device": "cpu"}},
        "source": {"datasets": [{"instances": str(world / "instances.json"), "images": str(world / "images")}]},
        "pool": {"instances": str(world / "pool.json"), "images": str(world / "images"),
                 "gt": str(tmp_path / "gt.json")},
        "selection": {"policy": "instance", "thresholds": [0.0], "ignore_threshold": 0.0},
    }
    summary = kd_loop.run_loop(kd_loop.load_config(table=table), log=lambda message: None)
    run = tmp_path / "run"
    assert (run / "round_001" / "fit.json").is_file() and (run / "round_001" / "metrics.json").is_file()
    assert "| 1 |" in summary.read_text()


@pytest.mark.slow
def test_a_kd_loop_schedule_ends_with_a_detector_only_stage(world, tmp_path):
    """kd-loop's per-round keys drive dpsnet: an instance-level round, then a last stage on the
    pseudo-labels alone with the counting losses off (the released DPSNet's final stage), each round its own
    learner settings."""
    import json

    kd_loop = pytest.importorskip("kd_loop")
    overrides = {k: v for k, v in tiny_overrides(world).items() if not k.startswith("data.train")}
    table = {
        "rounds": 2, "seed": 0, "workdir": str(tmp_path / "run"),
        "learner": {"path": "dpsnet.kd:Learner",
                    "kwargs": {"preset": "cpu-small", "overrides": {**overrides, "train.threads": 1},
                               "batch_size": 2, "device": "cpu"}},
        "source": {"datasets": [{"instances": str(world / "instances.json"), "images": str(world / "images")}]},
        "pool": {"instances": str(world / "pool.json"), "images": str(world / "images")},
        "selection": {"policies": ["instance"], "thresholds": [0.0], "ignore_threshold": 0.0},
        "mix": {"source_ratios": [1.0, 0.0]},
    }
    final = {"model.density_loss_weight": 0.0, "model.count_loss_weight": 0.0, "train.schedule": "constant"}
    config = kd_loop.load_config(table=table, overrides=[
        "learner.round_kwargs=[{}, { overrides = { " + ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in final.items())
        + " } }]"])
    kd_loop.run_loop(config, log=lambda message: None)
    run = tmp_path / "run"
    mixes = [json.loads((run / f"round_{r:03d}" / "mix.json").read_text()) for r in (1, 2)]
    assert mixes[0]["source_images"] > 0 and mixes[1]["source_images"] == 0 and len(mixes[1]["datasets"]) == 1
    logs = [[json.loads(line) for line in (run / f"round_{r:03d}" / "model" / "log.jsonl").read_text().splitlines()]
            for r in (1, 2)]
    steps = [[rec for rec in log if rec["type"] == "train"] for log in logs]
    assert any(rec["loss_density"] > 0 for rec in steps[0])
    assert steps[1] and all(rec["loss_density"] == rec["loss_count"] == 0 for rec in steps[1])  # detector alone
    assert len({rec["lr"] for rec in steps[1]}) == 1  # constant after warmup (tiny_overrides' 1 step)
