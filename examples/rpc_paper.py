"""The DPSNet paper's flow on the real RPC files: the same stages as `aco_pipeline.py`, the released schedule.

    python examples/rpc_paper.py --rpc-root /data/retail_product_checkout --backbone-weights resnet101.pth
    python examples/rpc_paper.py --rpc-root /data/retail_product_checkout --plan --nproc 8   # the plan only

RPC_ROOT holds train2019/ val2019/ test2019/ and instances_{train,val,test}2019.json as downloaded (any folder
in that layout works, e.g. the mini world of `rpc-synth world`). Exemplar masks, pose pruning, synthesis
(`--workers` processes) -> translator and histogram baseline -> Syn, Syn+histogram, Syn+Render source models
(`dpsnet train --config rpc-paper`, under `torchrun --nproc-per-node N` when N > 1) -> kd-loop over the
unlabeled test images as the released code schedules it: 14 image-level rounds of 10 000 steps, each on the
previous round's pseudo-labels (thresholds 0.95, then 0.80 x5, 0.85 x3, 0.90, 0.95), one learning rate per
round decaying as the released single schedule does, 100 000 source images a round; then the instance-level
final stage (every test image with a detection >= 0.95, those as labels, the lower ones ignored, detector only,
no source images, 10 000 steps) -> report (val-chosen thresholds: `transfer`; `oracle` beside it). Every stage
resumes; see aco_stages.py. The one deliberate departure: pseudo-labels are chosen without test labels (the
released code compares the detections with the test ground truth). docs/PAPER.md has the comparison.

Steps and learning rates are those of the released total batch of 8 images: dpsnet scales them to the run's
own (`train.reference_batch`), so the schedule per image is the same on 1 or 8 GPUs; `--plan` writes
OUT/plan.json and prints every stage's command and that schedule without running anything.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import click
from aco_pipeline import Pipeline, check_overrides, overrides_option, run_pipeline
from aco_recipe import SOURCE_MODELS, Layout, Recipe, check_rpc_root
from aco_stages import InputError, tool

from rpc_metrics.toml import toml_value

# The released code's values (jianzhnie/DPSNet @ d327140; paths under its dpsnet/ folder). KD = configs/
# e2e_faster_rcnn_R_101_FPN_1x_rpc_syn_render_cross_finetune.yaml, IS = configs/..._rpc_instance_select.yaml.
RELEASED_BATCH = 8  # images per step, all GPUs together: KD:40, IS:35 (and the source model's config, line 37)
KD_ROUNDS = 14  # KD:37 CROSS_TRAIN_STEPS
KD_STEPS = 10_000  # KD:39 ITER_PER_STEP
KD_LR = 0.001  # KD:33 BASE_LR
# KD:35 STEPS over KD:36 MAX_ITER: one optimizer and scheduler for all rounds (tools/train_net.py:35-36,
# engine/trainer.py:260), so each round trains at one rate: 1e-3 in rounds 1-7, 1e-4 in 8-10, 1e-5, 1e-6.
KD_DROPS = (70_000, 100_000, 120_000)
KD_GAMMA = 0.1  # maskrcnn_benchmark/config/defaults.py:391
WARMUP_STEPS = 500  # defaults.py:395, once, at the start of the distillation run (its one scheduler)
WARMUP_FACTOR = 1 / 3  # defaults.py:394
KD_SOURCE_IMAGES = 100_000  # KD:38 CROSS_TRAIN_DATA_RATIO -100000: a fresh random 100k a round (trainer.py:228-235)
# The labels of round r are made after round r - 1 (trainer.py:330) at [0.8, 0.85, 0.9, 0.95] indexed by
# bisect_right([5, 8, 9], r - 2) (trainer.py:253-254); round 1's by the source model at 0.95
# (tools/train_net.py:114, written where KD:44 reads them).
KD_THRESHOLDS, KD_THRESHOLD_STEPS, FIRST_THRESHOLD = (0.8, 0.85, 0.9, 0.95), (5, 8, 9), 0.95
FINAL_THRESHOLD = 0.95  # data/datasets/rpc.py:220 (labels score > 0.95, rpc.py:235, 268)
FINAL_IGNORE = 0.05  # the lower detections, down to the test score threshold (defaults.py:186), painted gray (rpc.py:273-277)
FINAL_STEPS, FINAL_LR, FINAL_DROPS, FINAL_WARMUP = 10_000, 0.001, (2_500, 5_000, 7_500), 0  # IS:34, 31, 33, 36
# The final stage trains the detector alone (IS has no HEATMAP_ON, unlike KD:24) on the pseudo-labels alone.
DETECTOR_ONLY = {"model.density_loss_weight": 0.0, "model.count_loss_weight": 0.0}

# The paper's recipe at RPC scale. Budgets (for the ETA lines) are rough per-stage estimates on 8 H100s and
# 16+ CPU cores; dpsnet's measured rpc-paper step is 63 ms per GPU at 2 images (packages/dpsnet/benchmarks/GPU_STEP.md).
STEP_S_PER_GPU = 0.063
RPC_PAPER = Recipe(
    workers=os.cpu_count() or 1, threads=0, refine_px=400, synth_images=100_000, heldout_images=1000,
    # Every synthesized image is rendered, as the released catalog's rendered set is the synthesized one
    # (maskrcnn_benchmark/config/paths_catalog.py:165-176).
    synth_size=800, render_method="cyclegan", render_iters=2000, render_crop=96, render_images=None, pretrain_steps=0,
    preset="rpc-paper", source_steps=None, source_trunk_steps=0, source_minutes=None,
    kd_rounds=KD_ROUNDS + 1, kd_steps=KD_STEPS, kd_minutes=None, kd_lr=KD_LR, vis_images=4,
    budgets={"world": 0, "masks": 1800, "poses": 10, "synth_fit": 120, "synth": 3600, "synth_heldout": 60, "pretrain": 0,
             "checkout_unlabeled": 60, "render_train": 900, "render_apply": 36000, "render_camera": 3600, "histogram": 6000,
             "render_measure": 1800, "startup": 120, "train_step": STEP_S_PER_GPU * RELEASED_BATCH / 16,
             "predict_per_model": 900, "kd_predict_per_round": 600, "visualize": 60, "bundle": 60},
)


def round_thresholds(rounds: int) -> list[float]:
    """The threshold of the pseudo-labels each of ``rounds`` image-level rounds trains on (see KD_THRESHOLDS)."""
    return [FIRST_THRESHOLD if r == 1 else KD_THRESHOLDS[bisect.bisect_right(KD_THRESHOLD_STEPS, r - 2)]
            for r in range(1, rounds + 1)]


def round_lr(r: int, rounds: int) -> float:
    """Round ``r``'s learning rate (at the released batch): the released decay points (KD_DROPS of 14 x 10 000
    steps) placed at the same share of ``rounds`` rounds; a drop falls at the start of the round it reaches."""
    total = KD_ROUNDS * KD_STEPS
    return float(f"{KD_LR * KD_GAMMA ** sum((r - 1) * total >= drop * rounds for drop in KD_DROPS):.12g}")


def _given_keys(items: Sequence[str]) -> set[str]:
    return {item.partition("=")[0].strip() for item in items}


def paper_kd_set(rounds: int, final_steps: int, dpsnet_set: Sequence[str] = (), kd_set: Sequence[str] = ()
                 ) -> tuple[str, ...]:
    """kd-loop overrides for ``rounds`` image-level rounds and, when ``final_steps`` > 0, the instance-level final
    stage. A key the user sets wins: ``--kd-set selection.policy=...`` applies to every round instead of the
    per-round policies, a ``--dpsnet-set`` key replaces the rounds' own value of it."""
    user_kd, user_dpsnet = _given_keys(kd_set), _given_keys(dpsnet_set)
    final = final_steps > 0

    def learner(overrides: dict) -> dict:
        return {"overrides": {k: v for k, v in overrides.items() if k not in user_dpsnet}}

    round_kwargs = [learner({"train.schedule": "constant", "train.lr": round_lr(r, rounds),
                             "train.warmup_steps": WARMUP_STEPS if r == 1 else 0})
                    for r in range(1, rounds + 1)]
    policies = ["image"] * rounds
    thresholds, ratios = round_thresholds(rounds), [1.0] * rounds
    if final:
        drops = [max(1, round(final_steps * d / FINAL_STEPS)) for d in FINAL_DROPS]
        round_kwargs.append(learner({"train.schedule": "step", "train.lr": FINAL_LR, "train.max_steps": final_steps,
                                     "train.lr_steps": drops, "train.warmup_steps": FINAL_WARMUP, **DETECTOR_ONLY}))
        policies, thresholds, ratios = [*policies, "instance"], [*thresholds, FINAL_THRESHOLD], [*ratios, 0.0]
    items = {
        # The released check: detections scoring above the threshold agree with the rounded total count
        # (evaluation/rpc/__init__.py:87, 113-130); no count scale and no minimum share (ours, not released).
        "selection.policies": policies, "selection.thresholds": thresholds, "selection.target_precision": 0,
        "selection.count_scale": "none", "selection.min_share": 0, "selection.min_boxes": 1,
        "selection.ignore_threshold": FINAL_IGNORE,
        "mix.source_images": KD_SOURCE_IMAGES, "mix.source_ratios": ratios,
        "learner.round_kwargs": round_kwargs,
    }
    if "selection.policy" in user_kd:
        del items["selection.policies"]
    if "mix.source_ratio" in user_kd:
        del items["mix.source_ratios"]
    return tuple(f"{key}={toml_value(value)}" for key, value in items.items()) + tuple(kd_set)


def paper_recipe(*, rounds: int = KD_ROUNDS, steps: int = KD_STEPS, final_steps: int | None = None, nproc: int = 1,
                 dpsnet_set: Sequence[str] = (), kd_set: Sequence[str] = (), **given) -> Recipe:
    """RPC_PAPER with ``rounds`` image-level rounds of ``steps`` steps each (released batch), the final stage
    (``final_steps``, default ``steps``; 0: none) and the user's overrides."""
    final_steps = steps if final_steps is None else final_steps
    budgets = {**RPC_PAPER.budgets, "train_step": STEP_S_PER_GPU * RELEASED_BATCH / (2 * nproc)}
    return replace(RPC_PAPER, nproc=nproc, kd_rounds=rounds + (final_steps > 0), kd_steps=steps,
                   dpsnet_set=tuple(dpsnet_set), kd_set=paper_kd_set(rounds, final_steps, dpsnet_set, kd_set),
                   budgets=budgets, **given)


# ------------------------------------------------------------------------------------------------ the plan


class PlanPipeline(Pipeline):
    """The pipeline with every command recorded instead of run, nothing written, and the distilled source model
    ``choice`` (chosen on val when the run gets there)."""

    def __init__(self, recipe: Recipe, layout: Layout, choice: str):
        super().__init__(recipe, layout)
        self.commands: list[list[str]] = []
        self.choice = choice

    def source_choice(self) -> str:
        return self.choice

    def link_unlabeled(self, target: Path) -> None:
        self.commands.append(["(in process) link the unlabeled checkout images into", str(target)])

    def run(self, args: Sequence) -> None:
        self.commands.append([str(a) for a in args])

    def train(self, run_dir: Path, overrides: Sequence[str]) -> None:
        # recorded without looking into run_dir (a plan neither resumes nor removes a killed start)
        self.run([*self.launcher("dpsnet"), "train", "--config", self.r.preset, "--out", run_dir, *overrides])

    def predict(self, checkpoint: Path, instances: Path, images: Path, results: Path, counts: Path) -> None:
        # one process predicts in the pipeline's own process: the equivalent command
        self.run([*self.launcher("dpsnet"), "predict", "--checkpoint", checkpoint, "--instances", instances,
                  "--images", images, "--out-results", results, "--out-counts", counts, "--quiet"])

    def render_source(self) -> Path:
        synth_json = self.p.dataset("synth")[0]
        return synth_json if self.r.render_images is None else self.p.out / "synth" / "instances_render_subset.json"

    def measure_render(self, target: Path) -> None:
        self.commands.append(["(in process) rpc_synth.render.measure.measure_render", str(target)])

    def visualize(self) -> None:
        self.commands.append(["(in process) dpsnet.inference.visualize_files", str(self.p.out / "figures")])

    def export_bundle(self) -> None:
        self.export(self.p.out / "kd" / f"round_{self.r.kd_rounds:03d}" / "model" / "last.pt",
                    "(the last round's transfer threshold, chosen at run time)")


def per_image(config: dict, world_size: int) -> dict:
    """A dpsnet training run's schedule for ``world_size`` processes, per image: what dpsnet will run
    (``dpsnet.config.scale_to_batch``) and the learning rate per image of each phase."""
    from dpsnet.config import scale_to_batch

    run = {**config, **scale_to_batch(config, world_size)}
    total = run["train.batch_size"] * world_size
    steps = run["train.max_steps"]
    drops = [s for s in run["train.lr_steps"] if s > 0] or [round(steps * 2 / 3), round(steps * 8 / 9)]
    if run["train.schedule"] != "step":
        drops = []
    bounds = [0, *[d for d in drops if d < steps], steps]
    phases = [{"images": [a * total, b * total], "lr_per_image": run["train.lr"] * run["train.lr_gamma"] ** i / total}
              for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    return {"processes": world_size, "batch_per_process": run["train.batch_size"], "total_batch": total,
            "steps": steps, "lr": run["train.lr"], "lr_steps": drops, "schedule": run["train.schedule"],
            "warmup_steps": run["train.warmup_steps"], "warmup_images": run["train.warmup_steps"] * total,
            "warmup_factor": run["train.warmup_factor"], "lr_per_image": run["train.lr"] / total,
            "images_seen": steps * total, "phases": phases}


def _dpsnet_config(preset: str, overrides) -> dict:
    from dpsnet.config import make_config

    return make_config(preset, overrides)


def resolve_plan(recipe: Recipe, layout: Layout, *, choice: str = "render") -> dict:
    """Every stage's commands and settings, each training run's resolved config and schedule per image, and
    kd-loop's rounds, without running anything (no GPU, no file written)."""
    from kd_loop.config import load_config

    pipeline = PlanPipeline(recipe, layout, choice)
    stages = []
    loop, _ = pipeline.kd_config()  # what the kd stage writes to OUT/kd/loop.toml
    for stage in pipeline.stages():
        start = len(pipeline.commands)
        if stage.name == "kd":  # its action also writes the loop's config: only its command here
            pipeline.run([tool("kd-loop"), "run", layout.out / "kd" / "loop.toml", *recipe.kd_set])
        else:
            stage.action()
        stages.append({"name": stage.name, "title": stage.title, "commands": pipeline.commands[start:],
                       "settings": json.loads(json.dumps(stage.settings, default=str))})
    training = {}
    for key, _, names in SOURCE_MODELS:
        config = _dpsnet_config(recipe.preset, pipeline.source_overrides(names))
        training[f"source_{key}"] = {"config": config, "per_image": per_image(config, recipe.nproc)}
    config = load_config(table=json.loads(json.dumps(loop)), overrides=recipe.kd_set)
    rounds = []
    for entry in config.schedule(recipe.kd_rounds):
        kwargs = entry.pop("learner_kwargs")
        student = _dpsnet_config(kwargs.get("preset", recipe.preset), kwargs.get("overrides", {}))
        counting = student["model.density_loss_weight"] > 0 or student["model.count_loss_weight"] > 0
        rounds.append({**entry, "counting_view_trained": counting, "overrides": kwargs.get("overrides", {}),
                       "per_image": per_image(student, 1)})  # the students train in kd-loop's own process
    return {"title": "DPSNet flow on RPC: the plan", "out": str(layout.out), "rpc_root": str(layout.rpc_root),
            "nproc": recipe.nproc, "recipe": json.loads(json.dumps(asdict(recipe), default=str)),
            "distilled_source_model": f"{choice} (chosen on the val split when the run gets there)",
            "stages": stages, "training": training,
            "kd_loop": {"config": json.loads(json.dumps(loop, default=str)), "overrides": list(recipe.kd_set),
                        "rounds": rounds}}


def format_plan(plan: dict) -> str:
    """The plan as text: stages and commands, the source models' schedule, kd-loop's rounds."""
    lines = [f"# {plan['title']} ({plan['nproc']} training process(es); written to {plan['out']}/plan.json)", ""]
    for i, stage in enumerate(plan["stages"], 1):
        lines.append(f"[{i}/{len(plan['stages'])}] {stage['name']}: {stage['title']}")
        lines += [f"    $ {' '.join(command)}" for command in stage["commands"]]
    lines += ["", "## Source models (dpsnet train; schedule per image)", "",
              "| model | processes x batch | steps | lr | lr per image | warmup images | lr drops (images) | images seen |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, run in plan["training"].items():
        s = run["per_image"]
        drops = ", ".join(f"{p['images'][0]:,}" for p in s["phases"][1:]) or "-"
        lines.append(f"| {name} | {s['processes']} x {s['batch_per_process']} | {s['steps']:,} | {s['lr']:.6g} | "
                     f"{s['lr_per_image']:.4g} | {s['warmup_images']:,} | {drops} | {s['images_seen']:,} |")
    lines += ["", f"## Distillation (kd-loop, {len(plan['kd_loop']['rounds'])} rounds; the students train in one "
              "process)", "",
              "| round | policy | threshold | ignored from | source images | steps | lr | lr per image | images seen | counting view |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in plan["kd_loop"]["rounds"]:
        s = entry["per_image"]
        source = ("0" if entry["source_ratio"] == 0 else f"{entry['source_images']:,}" if entry["source_images"]
                  else f"{entry['source_ratio']:g} per pseudo image")
        ignored = f"{entry['ignore_threshold']:g}" if entry["policy"] in ("instance", "random-instance") else "-"
        threshold = "calibrated" if entry["threshold"] is None else f"{entry['threshold']:g}"
        lines.append(f"| {entry['round']} | {entry['policy']} | {threshold} | {ignored} | {source} | {s['steps']:,} | "
                     f"{s['lr']:.3g} | {s['lr_per_image']:.4g} | {s['images_seen']:,} | "
                     f"{'trained' if entry['counting_view_trained'] else 'frozen out (detector only)'} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ command line


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rpc-root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder with train2019/ val2019/ test2019/ and instances_{train,val,test}2019.json.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/rpc-paper"),
              show_default=True, help="Report folder; an existing run there resumes.")
@click.option("--nproc", type=int, default=None,
              help="Training processes (GPUs) for the source models: >1 launches torchrun (default: every GPU).")
@click.option("--plan", "plan_only", is_flag=True,
              help="Write OUT/plan.json and print every stage's command and the schedule per image; run nothing.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="ImageNet weights of the ResNet body (the paper's start; see packages/dpsnet/README.md).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every stage.")
@click.option("--workers", type=int, default=None, help="Processes for masks and synthesis (default: every core).")
@click.option("--synth-images", type=int, default=None, help="Synthesized training images (default 100000).")
@click.option("--heldout-images", type=int, default=None, help="Held-out synthesized images (default 1000).")
@click.option("--synth-size", type=int, default=None, help="Side of the synthesized images in px (default 800).")
@click.option("--render-iters", type=int, default=None, help="Translator training iterations (default 2000).")
@click.option("--render-images", type=int, default=None,
              help="Translate only the first N synthesized images for Syn+Render and Syn+histogram (default: all).")
@click.option("--source-steps", type=int, default=None,
              help="Steps of each source model at the released batch of 8 images (default: the preset's 180000).")
@click.option("--kd-rounds", type=click.IntRange(1), default=KD_ROUNDS, show_default=True,
              help="Image-level distillation rounds.")
@click.option("--kd-steps", type=click.IntRange(1), default=KD_STEPS, show_default=True,
              help="Student steps per round at the released batch of 8 images.")
@click.option("--final-steps", type=click.IntRange(0), default=None,
              help="Steps of the instance-level final stage at the released batch (default: --kd-steps; 0: none).")
@overrides_option("--dpsnet-set", "A dpsnet config override for every training run (repeatable); wins over the "
                                  "rounds' own values of that key.")
@overrides_option("--kd-set", "A kd-loop config override (repeatable; see `kd-loop keys`); selection.policy=P "
                              "applies P to every round.")
def main(rpc_root, out, nproc, plan_only, backbone_weights, seed, workers, synth_images, heldout_images, synth_size,
         render_iters, render_images, source_steps, kd_rounds, kd_steps, final_steps, dpsnet_set, kd_set) -> None:
    """Reproduce the paper's flow on the RPC files (single GPU, or torchrun over every GPU)."""
    check_overrides(dpsnet_set, "--dpsnet-set")
    check_overrides(kd_set, "--kd-set")
    if not rpc_root.is_dir():
        raise InputError(f"--rpc-root {rpc_root}: folder not found; give the folder of the RPC download")
    check_rpc_root(rpc_root)
    if nproc is None:
        nproc = max(gpu_count(), 1)
    if nproc < 1:
        raise InputError(f"--nproc should be at least 1, got {nproc}")
    given = {"seed": seed, "workers": workers, "synth_images": synth_images, "heldout_images": heldout_images,
             "synth_size": synth_size, "render_iters": render_iters, "render_images": render_images,
             "source_steps": source_steps, "backbone_weights": backbone_weights.resolve() if backbone_weights else None}
    recipe = paper_recipe(rounds=kd_rounds, steps=kd_steps, final_steps=final_steps, nproc=nproc,
                          dpsnet_set=dpsnet_set, kd_set=kd_set, rpc_root=rpc_root.resolve(),
                          **{k: v for k, v in given.items() if v is not None})
    layout = Layout(out.resolve(), rpc_root=rpc_root.resolve())
    if "selection.policy" in _given_keys(kd_set):
        click.echo("note: --kd-set selection.policy applies to every round (the per-round policies are off)", err=True)
    if plan_only:
        plan = resolve_plan(recipe, layout)
        layout.out.mkdir(parents=True, exist_ok=True)
        (layout.out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
        click.echo(format_plan(plan), nl=False)
        return
    if backbone_weights is None:
        click.echo("note: no --backbone-weights: the ResNet starts from random weights (the paper starts from "
                   "ImageNet); expect far lower accuracy", err=True)
    if nproc > 1:
        click.echo(f"source models: torchrun --nproc-per-node {nproc} -m dpsnet train ...; the kd-loop students "
                   "train in kd-loop's own process (one GPU); dpsnet scales both to the released batch of 8", err=True)
    report = run_pipeline(recipe, layout, title="DPSNet flow on RPC")
    click.echo(report.read_text(encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
