"""The same train and predict commands under torchrun: 2 processes on CPU (gloo)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from rpc_metrics.io import read_counts, read_pool, read_results

from .conftest import tiny_overrides


def torchrun(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dpsnet",
           *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_two_process_cpu_training_and_prediction(world, tmp_path):
    overrides = tiny_overrides(world, **{"train.max_steps": 3, "train.batch_size": 1,
                                         "data.val_instances": str(world / "instances.json"),
                                         "data.val_images": str(world / "images")})
    proc = torchrun("train", "--out", tmp_path / "run", *[f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3]  # one log, written by rank 0 only
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2 and (tmp_path / "run" / "best.pt").is_file()

    # The counter refined alone under DDP: only the counting view is trainable (and reduced across ranks). Its
    # schedule is given for a total batch of 1 image (train.reference_batch): 4 steps at lr 0.01 become 2 steps of
    # 2 images (1 per process) at 0.02.
    refine = {**overrides, "train.trainable": "counting", "train.max_steps": 4, "data.val_instances": "",
              "train.init_checkpoint": str(tmp_path / "run" / "last.pt"), "train.reference_batch": 1}
    proc = torchrun("train", "--out", tmp_path / "count", *[f"{k}={json.dumps(v)}" for k, v in refine.items()])
    assert proc.returncode == 0, proc.stderr[-3000:]
    refined = torch.load(tmp_path / "count" / "last.pt", weights_only=True)
    records = [json.loads(line) for line in (tmp_path / "count" / "log.jsonl").read_text().splitlines()]
    scaling = next(r for r in records if r["type"] == "batch_scaling")
    assert (scaling["total_batch"], scaling["train.max_steps"], scaling["train.lr"]) == (2, 2, 0.02)
    assert refined["step"] == 2 and refined["config"]["train.max_steps"] == 4
    changed = {k for k, v in ckpt["model"].items() if not torch.equal(refined["model"][k], v)}
    assert changed and all(k.startswith("counting_view.") for k in changed), sorted(changed)

    proc = torchrun("predict", "--checkpoint", tmp_path / "run" / "last.pt", "--instances", world / "pool.json",
                    "--images", world / "images", "--out-results", tmp_path / "r.json", "--out-counts",
                    tmp_path / "c.json", "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pool = read_pool(world / "pool.json")
    read_results(tmp_path / "r.json", gt=pool)
    assert len(read_counts(tmp_path / "c.json", pool=pool)["images"]) == len(pool["images"])
