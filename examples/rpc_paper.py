"""The DPSNet paper's flow on the real RPC files: the same stages as `aco_pipeline.py`, the `rpc-paper` preset.

    python examples/rpc_paper.py --rpc-root /data/retail_product_checkout --backbone-weights resnet101.pth

RPC_ROOT holds train2019/ val2019/ test2019/ and instances_{train,val,test}2019.json as downloaded (any folder
in that layout works, e.g. the mini world of `rpc-synth world`). Exemplar masks, pose pruning, synthesis
(`--workers` processes) -> translator and histogram baseline -> Syn, Syn+histogram, Syn+Render source models
(`dpsnet train --config rpc-paper`, under `torchrun --nproc-per-node N` when N > 1) -> kd-loop with the
paper's threshold schedule (0.80, 0.85, 0.90, 0.95, one round each) over the unlabeled test images ->
report (val-chosen thresholds: `transfer`; `oracle` beside it). Every stage resumes; see aco_stages.py.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click
from aco_pipeline import Layout, Recipe, check_overrides, check_rpc_root, overrides_option, run_pipeline
from aco_stages import InputError

# The paper's recipe at RPC scale. Budgets (for the ETA lines) are rough per-stage estimates on 8 H100s and
# 16+ CPU cores; dpsnet's measured rpc-paper step is 63 ms per GPU (packages/dpsnet/benchmarks/GPU_STEP.md).
RPC_PAPER = Recipe(
    workers=os.cpu_count() or 1, threads=0, refine_px=400, synth_images=100_000, heldout_images=1000,
    synth_size=800, render_method="cyclegan", render_iters=2000, render_crop=96, render_images=20_000, pretrain_steps=0,
    preset="rpc-paper",
    source_steps=None, source_trunk_steps=0, source_minutes=None, kd_rounds=4, kd_steps=20_000, kd_minutes=None, vis_images=4,
    budgets={"world": 0, "masks": 1800, "poses": 10, "synth_fit": 120, "synth": 3600, "synth_heldout": 60, "pretrain": 0,
             "checkout_unlabeled": 60, "render_train": 900, "render_apply": 7200, "render_camera": 3600, "histogram": 1200, "render_measure": 1800,
             "startup": 120, "train_step": 0.09, "predict_per_model": 900, "kd_predict_per_round": 600,
             "visualize": 60},
)


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
@click.option("--backbone-weights", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="ImageNet weights of the ResNet body (the paper's start; see packages/dpsnet/README.md).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every stage.")
@click.option("--workers", type=int, default=None, help="Processes for masks and synthesis (default: every core).")
@click.option("--synth-images", type=int, default=None, help="Synthesized training images (default 100000).")
@click.option("--heldout-images", type=int, default=None, help="Held-out synthesized images (default 1000).")
@click.option("--synth-size", type=int, default=None, help="Side of the synthesized images in px (default 800).")
@click.option("--render-iters", type=int, default=None, help="Translator training iterations (default 2000).")
@click.option("--render-images", type=int, default=None,
              help="Synthesized images translated for Syn+Render and Syn+histogram (default 20000).")
@click.option("--source-steps", type=int, default=None, help="Steps of each source model (default: the preset's).")
@click.option("--kd-rounds", type=int, default=None, help="Distillation rounds (default 4, one per threshold).")
@click.option("--kd-steps", type=int, default=None, help="Student steps per round (default 20000).")
@overrides_option("--dpsnet-set", "A dpsnet config override for every training run (repeatable).")
@overrides_option("--kd-set", "A kd-loop config override (repeatable; see `kd-loop keys`).")
def main(rpc_root, out, nproc, backbone_weights, seed, workers, synth_images, heldout_images, synth_size,
         render_iters, render_images, source_steps, kd_rounds, kd_steps, dpsnet_set, kd_set) -> None:
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
    if backbone_weights is None:
        click.echo("note: no --backbone-weights: the ResNet starts from random weights (the paper starts from "
                   "ImageNet); expect far lower accuracy", err=True)
    given = {"seed": seed, "workers": workers, "synth_images": synth_images, "heldout_images": heldout_images,
             "synth_size": synth_size, "render_iters": render_iters, "render_images": render_images,
             "source_steps": source_steps, "kd_rounds": kd_rounds, "kd_steps": kd_steps,
             "backbone_weights": backbone_weights.resolve() if backbone_weights else None}
    recipe = replace(RPC_PAPER, rpc_root=rpc_root.resolve(), nproc=nproc, dpsnet_set=tuple(dpsnet_set),
                     kd_set=tuple(kd_set), **{k: v for k, v in given.items() if v is not None})
    if nproc > 1:
        click.echo(f"source models: torchrun --nproc-per-node {nproc} -m dpsnet train ...; the kd-loop students "
                   "train in kd-loop's own process (one GPU)", err=True)
    report = run_pipeline(recipe, Layout(out.resolve(), rpc_root=rpc_root.resolve()), title="DPSNet flow on RPC")
    click.echo(report.read_text(encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
