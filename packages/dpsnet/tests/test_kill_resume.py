"""`dpsnet train` killed (SIGKILL) after a checkpoint and resumed with --resume ends with the same weights, bit for
bit, as a run that was never interrupted, and leaves no temporary file in its run folder."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import tiny_overrides

MAX_STEPS = 32  # ~1 s of steps after the first checkpoint: time enough to kill the run before its end
CHECKPOINT_EVERY = 2


def _args(world, **extra) -> list[str]:
    values = tiny_overrides(world, **{"train.max_steps": MAX_STEPS, "train.checkpoint_every": CHECKPOINT_EVERY,
                                      "train.threads": 1, "data.epoch_size": 6, "data.brightness": 0.2,
                                      "data.scale_min": 0.8, "train.lr_steps": [20]}, **extra)
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def _train(out, *args: str, resume: bool = False) -> subprocess.Popen:
    """`dpsnet train` in a child process on one thread (the same thread count for every run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "dpsnet", "train", "--config", "cpu-small", "--out", str(out),
               *(["--resume"] if resume else []), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return output


def _checkpoint_step(path) -> int | None:
    """The step of ``path`` once a complete checkpoint is there (None before)."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["step"]


@pytest.mark.slow
def test_train_killed_after_a_checkpoint_resumes_to_the_same_weights(world, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = _args(world)
    _finish(_train(straight, *args))

    proc = _train(killed, *args)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "last.pt").is_file():  # written atomically: once there, a whole checkpoint
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()  # no-op once it is dead; stops it should an assertion above fail
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{output}"
    step = _checkpoint_step(killed / "last.pt")
    assert step is not None and 0 < step < MAX_STEPS and step % CHECKPOINT_EVERY == 0

    # What a kill in the middle of writing a checkpoint leaves: atomic_output's temporary file, named with the pid.
    (killed / f".last.{proc.pid}-abcd1234.tmp.pt").write_bytes(b"half a checkpoint")

    output = _finish(_train(killed, f"train.max_steps={MAX_STEPS}", resume=True))
    assert f"from step {step}" in output

    a = torch.load(straight / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == MAX_STEPS and (a["epoch"], a["position"]) == (b["epoch"], b["position"])
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
    assert torch.equal(a["rng"][0], b["rng"][0])
    for key, value in a["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(b["optimizer"]["state"][key][name], tensor), (key, name)
    assert a["scheduler"] == b["scheduler"]

    # No temporary or partial file is left in the run folder (nor in the uninterrupted one).
    for run in (straight, killed):
        assert not [p.name for p in run.rglob("*") if p.name.startswith(".") or "tmp" in p.name], run
    assert {p.name for p in killed.iterdir()} == {p.name for p in straight.iterdir()}
