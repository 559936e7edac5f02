"""kd-loop against its two controls, same compute: the demo's optional stages (`aco_pipeline.py --controls`).

- `random`: the same loop, but each round's pseudo-labels are drawn at random: for an image-level loop, as many
  images as the label-free selection keeps (kd-loop's `random` policy), labelled like the loop's; for an
  `instance` loop (which labels every image), as many labels as it keeps, drawn among all its candidate
  detections (`random-instance`).
- `steps`: the source model trained on its own (synthesized) data for as many extra steps as the rounds'
  students take together, from the same checkpoint, with the students' settings.

Both reuse the run's loop config (``OUT/kd/loop.toml``), so the learner, budgets, pool and test split are the
loop's; the random control starts from the loop's round 0 (hard links: the source model is not predicted again).
Every step resumes (kd-loop resumes itself, `dpsnet train --resume`, files written atomically). Outputs under
``OUT/controls/``: ``random/`` (a kd-loop workdir) and ``steps/`` (model, val and test predictions). The paired
comparison of the last round against each control is in the run's report. On a finished run,
`python examples/aco_pipeline.py --out runs/mini --controls` adds them (the other stages are done) and rewrites
the report.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import click
from aco_stages import resume_args, run_command, tool

from rpc_metrics.io import atomic_output, write_json
from rpc_metrics.toml import to_toml, toml_value


def run(args: list, threads: int = 0) -> None:
    """A toolkit command, stopping here when it fails."""
    run_command(args, threads=threads)


def read_loop(demo: Path) -> dict:
    path = demo / "kd" / "loop.toml"
    if not path.is_file():
        raise click.UsageError(f"{path} not found: run the demo's distillation stage first (or pass --demo)")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _link_tree(source: Path, dest: Path) -> None:
    """Hard-link copy of a finished folder (a copy where links are refused); the copy appears whole or not at all."""
    if dest.exists():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    tmp.rename(dest)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def random_control(demo: Path, loop: dict, kd_set: list[str], *, threads: int = 0) -> Path:
    """The loop again with random pseudo-labels (as many as the loop keeps), from the loop's own round 0."""
    out = demo / "controls" / "random"
    out.mkdir(parents=True, exist_ok=True)
    _link_tree(demo / "kd" / "round_000", out / "round_000")
    config = demo / "controls" / "random.toml"
    with atomic_output(config) as tmp:
        Path(tmp).write_text(to_toml({**loop, "workdir": str(out)}), encoding="utf-8")
    # kd-loop's own control of the loop's schedule: each round draws as many images (or labels) as its policy keeps.
    run([tool("kd-loop"), "run", config, *kd_set, 'selection.control="random"'], threads)
    return out


def steps_control(demo: Path, loop: dict, *, threads: int = 0) -> Path:
    """Train the source model on its own data for the rounds' total student steps; predict val and test."""
    out = demo / "controls" / "steps"
    learner = loop["learner"]["kwargs"]
    overrides = dict(learner.get("overrides", {}))
    rounds = int(loop["rounds"])
    steps = int(overrides.get("train.max_steps", 0))
    if steps <= 0:
        raise click.ClickException("the loop's learner sets no train.max_steps: cannot size the steps control")
    overrides["train.max_steps"] = steps * rounds
    if "train.time_limit_min" in overrides:
        overrides["train.time_limit_min"] = float(overrides["train.time_limit_min"]) * rounds
    sets = loop["source"]["datasets"]
    overrides.update({"data.train_instances": [d["instances"] for d in sets],
                      "data.train_images": [d["images"] for d in sets],
                      "train.init_checkpoint": loop["source"]["checkpoint"]})
    model = out / "model"
    if not (model / "done.json").is_file():
        run([tool("dpsnet"), "train", "--config", learner.get("preset", "cpu-small"), "--out", model,
             *resume_args(model),
             *(f"{k}={toml_value(v)}" for k, v in overrides.items())], threads)
        write_json({"steps": overrides["train.max_steps"]}, model / "done.json")
    # predicted as the loop's learner predicts (its crop-classifier re-scoring, if any)
    rescore = ["--reclassifier", learner["reclassifier"], "--reclassifier-power", learner.get("reclassifier_power", 0.5)] \
        if learner.get("reclassifier") else []
    test = loop.get("test") or loop["pool"]
    for split, spec in (("val", loop["val"]), ("test", test)):
        results = out / f"{split}_results.json"
        if not results.is_file():
            run([tool("dpsnet"), "predict", "--checkpoint", model / "last.pt", "--instances", spec["instances"],
                 "--images", spec["images"], "--out-results", results, "--out-counts", out / f"{split}_counts.json",
                 "--quiet", *rescore], threads)
    return out
