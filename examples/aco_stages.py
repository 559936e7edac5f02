"""Resumable stages for the example pipelines: skip what is done, refuse what was done differently, time it all.

A stage is done when its record ``OUT/stages/NAME.json`` exists; the record is written atomically after the
stage's command returned, so an interrupted stage runs again (the tools it calls resume their own work:
`rpc-synth masks/generate` skip finished images, `dpsnet train --resume`, `kd-loop run`). The record holds
the stage's settings; running into the same folder with other settings stops with exit status 2 instead of
mixing two runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from rpc_metrics.io import load_json, write_json


class InputError(click.ClickException):
    """Bad input or settings: one message naming the file or option and the fix; exit status 2."""

    exit_code = 2


def clock(seconds: float) -> str:
    """``"3 min 05 s"`` or ``"42 s"``."""
    seconds = round(max(seconds, 0.0))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def tool(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (or on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise InputError(f"command {name!r} not found beside {sys.executable} or on PATH; "
                         "install the toolkit with `make install`")
    return found


def run_command(args: Sequence[str], *, threads: int = 1, cwd: Path | None = None) -> None:
    """Run a toolkit command with ``threads`` CPU threads (0: unset), its output going to our stderr; a failure
    stops the pipeline."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    click.echo("  $ " + " ".join(str(a) for a in args), err=True)
    done = subprocess.run([str(a) for a in args], env=env, cwd=cwd, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        name = Path(str(args[0])).name
        # The tool printed its own one-line reason; exit status 2 from it means bad input.
        raise click.ClickException(f"`{name}` failed with exit status {done.returncode} (command above)") \
            if done.returncode != 2 else InputError(f"`{name}` rejected its input (message above)")


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: ``action()`` makes its outputs; ``settings`` identify what it makes."""

    name: str
    title: str
    budget_s: float
    settings: dict[str, Any]
    action: Callable[[], None]


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def eta(left_budget_s: float, ran_s: float, ran_budget_s: float, *, min_budget_s: float = 60.0) -> tuple[float, float]:
    """``(seconds left, pace)``: the budgets left scaled by this machine's pace, the time the stages run so far
    took over their budgets (1.0 until they were budgeted ``min_budget_s`` in all; the budgets were measured
    on one 2-core machine and a slower one takes them all about as many times longer)."""
    pace = ran_s / ran_budget_s if ran_budget_s >= min_budget_s else 1.0
    return left_budget_s * pace, pace


class StageRunner:
    """Runs stages in order with progress, ETA (from the budgets of the stages left, at the pace of the stages
    run so far) and timing records."""

    def __init__(self, out: Path, stages: Sequence[Stage]):
        self.out, self.stages = out, list(stages)
        self.records_dir = out / "stages"
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {names}")

    def record_path(self, stage: Stage) -> Path:
        return self.records_dir / f"{stage.name}.json"

    def check(self) -> None:
        """Before anything runs: every finished stage must have been made with today's settings."""
        for stage in self.stages:
            path = self.record_path(stage)
            if path.is_file():
                old = load_json(path)["settings"]
                new = json.loads(json.dumps(stage.settings))  # tuples -> lists, as stored
                if old != new:
                    raise InputError(
                        f"{path}: stage '{stage.name}' was made with other settings ("
                        + "; ".join(_differences(old, new)[:4])
                        + f"); use another --out, or delete {path} and the records of the stages after it "
                          "to redo them")

    def run(self, until: str | None = None) -> dict[str, dict]:
        """Run every stage not done yet (up to and including the stage named ``until``, if given); return each
        stage's record (seconds, whether it was resumed)."""
        names = [s.name for s in self.stages]
        if until is not None and until not in names:
            raise InputError(f"--until {until!r}: no such stage; the stages are {', '.join(names)}")
        self.check()
        started = time.monotonic()
        records = {}
        ran_s = ran_budget_s = 0.0
        for index, stage in enumerate(self.stages, 1):
            head = f"[{index}/{len(self.stages)}] {stage.title}"
            path = self.record_path(stage)
            if path.is_file():
                record = load_json(path)
                click.echo(f"{head}: done earlier, skipped (outputs kept; took {clock(record['seconds'])})", err=True)
                records[stage.name] = {**record, "skipped": True}
                if stage.name == until:
                    break
                continue
            left, pace = eta(sum(s.budget_s for s in self.stages[index - 1:] if not self.record_path(s).is_file()),
                             ran_s, ran_budget_s)
            paced = f" at {pace:.1f}x the budgets, this machine's pace so far" if abs(pace - 1.0) > 0.2 else ""
            click.echo(f"{head}: starting (budget {clock(stage.budget_s)}; ETA of the whole run {clock(left)}{paced}, "
                       f"{clock(time.monotonic() - started)} elapsed)", err=True)
            t0 = time.monotonic()
            stage.action()
            seconds = time.monotonic() - t0
            ran_s, ran_budget_s = ran_s + seconds, ran_budget_s + stage.budget_s
            record = {"name": stage.name, "title": stage.title, "seconds": seconds, "budget_s": stage.budget_s,
                      "settings": stage.settings, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_json(record, path, indent=2)  # atomic: the stage counts as done only now
            over = " (over budget)" if seconds > 1.2 * stage.budget_s else ""
            click.echo(f"{head}: done in {clock(seconds)}{over}; record {path}", err=True)
            records[stage.name] = {**record, "skipped": False}
            if stage.name == until:
                break
        return records


def resume_args(run_dir: Path) -> list[str]:
    """`dpsnet train`'s ``--resume`` when ``run_dir`` holds a checkpoint; a start killed before its first checkpoint
    is removed (dpsnet train refuses a folder that holds another run), so that training begins again."""
    if (run_dir / "last.pt").is_file():
        return ["--resume"]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return []
