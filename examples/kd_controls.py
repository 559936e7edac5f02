"""kd-loop against its two controls, same compute, on a finished `make demo` run (kd-loop's acceptance).

- `random`: the same loop, but each round's pseudo-labels are drawn at random: for an image-level loop, as many
  images as the label-free selection keeps (kd-loop's `random` policy), labelled like the loop's; for an
  `instance` loop (which labels every image), as many labels as it keeps, drawn among all its candidate
  detections (`random-instance`).
- `steps`: the source model trained on its own (synthesized) data for as many extra steps as the rounds'
  students take together, from the same checkpoint, with the students' settings.

Both reuse the demo's loop config (``OUT/kd/loop.toml``), so the learner, budgets and pool are the loop's.
Every stage is resumable (kd-loop resumes itself, `dpsnet train --resume`, files written atomically). Writes
``OUT/controls/controls.md`` and ``controls.json``: per round, selected images, image and box precision of the
pseudo-labels, and the pool's cAcc/mCIoU/ACD/mCCD with the `transfer` protocol (threshold from val) beside
the `oracle` cAcc. Test labels are read only to measure.

    python examples/kd_controls.py --demo runs/demo
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import click
from aco_pipeline import to_toml, toml_value
from aco_stages import run_command, tool

from kd_loop.config import SCHEMA, parse_overrides
from rpc_metrics import evaluate
from rpc_metrics.io import atomic_output, load_json, write_json


def run(args: list) -> None:
    """A toolkit command on every core (the demo's setting), stopping here when it fails."""
    run_command(args, threads=0)


def kd_rows(workdir: Path, rounds: int) -> list[dict]:
    rows = []
    for r in range(rounds + 1):
        folder = workdir / f"round_{r:03d}"
        metrics = load_json(folder / "metrics.json")
        selection = load_json(folder / "selection.json") if (folder / "selection.json").is_file() else {}
        quality = metrics.get("selection", {})
        rows.append({"round": r, "selected": selection.get("selected_images"),
                     "image_precision": quality.get("image_precision"), "box_precision": quality.get("box_precision"),
                     **{k: metrics["transfer"][k] for k in ("cacc", "mciou", "acd", "mccd")},
                     "cacc_oracle": metrics["oracle"]["cacc"]})
    return rows


def steps_control(loop: dict, out: Path) -> dict:
    """Train the source model on its own data for the rounds' total student steps; evaluate it on the pool."""
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
        resume = ["--resume"] if (model / "last.pt").is_file() else []
        run([tool("dpsnet"), "train", "--config", learner.get("preset", "cpu-small"), "--out", model, *resume,
             *(f"{k}={toml_value(v)}" for k, v in overrides.items())])
        write_json({"steps": overrides["train.max_steps"]}, model / "done.json")
    # predicted as the loop's learner predicts (its crop-classifier re-scoring, if any)
    rescore = ["--reclassifier", learner["reclassifier"], "--reclassifier-power", learner.get("reclassifier_power", 0.5)] \
        if learner.get("reclassifier") else []
    for split in ("pool", "val"):
        results = out / f"{split}_results.json"
        if not results.is_file():
            run([tool("dpsnet"), "predict", "--checkpoint", model / "last.pt", "--instances", loop[split]["instances"],
                 "--images", loop[split]["images"], "--out-results", results,
                 "--out-counts", out / f"{split}_counts.json", "--quiet", *rescore])
    transfer = evaluate(out / "pool_results.json", loop["pool"]["gt"], protocol="transfer",
                        val_results=out / "val_results.json", val_gt=loop["val"]["instances"])
    oracle = evaluate(out / "pool_results.json", loop["pool"]["gt"], protocol="oracle")
    row = transfer.row("averaged")
    return {"cacc": row.cacc, "mciou": row.mciou, "acd": row.acd, "mccd": row.mccd,
            "cacc_oracle": oracle.row("averaged").cacc, "steps": overrides["train.max_steps"]}


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--demo", "demo", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="A finished `make demo` folder (its kd/loop.toml and rounds).")
def main(demo: Path) -> None:
    """Run the random-selection and extra-steps controls of a demo's distillation loop and tabulate all three."""
    demo = demo.resolve()  # kd-loop resolves relative paths against its config's folder
    loop_path = demo / "kd" / "loop.toml"
    if not loop_path.is_file():
        raise click.UsageError(f"{loop_path} not found: run `make demo` first (or pass --demo)")
    loop = tomllib.loads(loop_path.read_text(encoding="utf-8"))
    rounds = int(loop["rounds"])
    if not (demo / "kd" / f"round_{rounds:03d}" / "metrics.json").is_file():
        raise click.UsageError(f"{demo / 'kd'}: the loop has not finished its {rounds} rounds")
    out = demo / "controls"
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    started = time.perf_counter()
    # The demo gives kd-loop its selection overrides on the command line: the control gets the same ones.
    stage = demo / "stages" / "kd.json"
    kd_set = list(load_json(stage).get("settings", {}).get("set", [])) if stage.is_file() else []
    policy = parse_overrides(kd_set).get("selection.policy", loop.get("selection", {}).get("policy", SCHEMA["selection.policy"][0]))
    control = "random-instance" if policy == "instance" else "random"
    with atomic_output(out / "random.toml") as tmp:
        Path(tmp).write_text(to_toml({**loop, "workdir": str(out / "random")}), encoding="utf-8")
    click.echo(f"[1/2] control: random pseudo-labels (kd-loop, policy {control})", err=True)
    run([tool("kd-loop"), "run", out / "random.toml", *kd_set, f'selection.policy="{control}"'])
    timings["random"] = time.perf_counter() - started

    started = time.perf_counter()
    click.echo("[2/2] control: the source model trained for the rounds' steps on synthesized data", err=True)
    steps = steps_control(loop, out / "steps")
    timings["steps"] = time.perf_counter() - started

    loop_rows, random_rows = kd_rows(demo / "kd", rounds), kd_rows(out / "random", rounds)
    kd_seconds = load_json(demo / "stages" / "kd.json").get("seconds") if (demo / "stages" / "kd.json").is_file() \
        else None
    best_control = max(random_rows[-1]["cacc"], steps["cacc"])
    lines = ["# kd-loop against its controls (same compute)", "",
             f"Demo folder `{demo}`; {rounds} rounds; pool = the checkout test images (labels for reporting only); "
             "cAcc/mCIoU/ACD/mCCD with the `transfer` protocol (threshold from val), oracle cAcc beside it.", "",
             "| run | round | selected images | image precision | box precision | cAcc | mCIoU | ACD | mCCD | "
             "cAcc (oracle) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, rows in (("loop (label-free selection)", loop_rows), ("control: random selection", random_rows)):
        for row in rows:
            lines.append(f"| {name} | {row['round']} | {row['selected'] if row['selected'] is not None else '-'} | "
                         f"{pct(row['image_precision'])} | {pct(row['box_precision'])} | {pct(row['cacc'])} | "
                         f"{pct(row['mciou'])} | {row['acd']:.2f} | {row['mccd']:.2f} | {pct(row['cacc_oracle'])} |")
    lines.append(f"| control: {steps['steps']} more steps on synthesized data | - | - | - | - | {pct(steps['cacc'])} | "
                 f"{pct(steps['mciou'])} | {steps['acd']:.2f} | {steps['mccd']:.2f} | {pct(steps['cacc_oracle'])} |")
    gain = loop_rows[-1]["cacc"] - best_control
    lines += ["", f"Round {rounds} minus the better control: {100 * gain:+.2f} points of cAcc (target: +15).",
              f"Loop rounds took {kd_seconds:.0f} s (the demo's kd stage)." if kd_seconds else "",
              f"This invocation took {timings['random']:.0f} s (random control) and {timings['steps']:.0f} s (steps "
              "control); a resumed one skips what is done."]
    report = "\n".join(lines).rstrip() + "\n"
    with atomic_output(out / "controls.md") as tmp:
        Path(tmp).write_text(report, encoding="utf-8")
    write_json({"loop": loop_rows, "random": random_rows, "steps": steps, "gain_vs_best_control": gain}, out / "controls.json",
               indent=2)
    click.echo(report)


if __name__ == "__main__":
    main()
