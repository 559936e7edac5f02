"""The report's descriptive sections: what ran (intro, distillation pool, timings, machine), how far rendering
moved the images, the source models in their own domain, and why the last stage miscounts (rpc-metrics errors).
Test labels are read here for reporting only.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from aco_stages import clock

from dpsnet.device import cpu_bf16_units
from rpc_metrics import analyse_errors, evaluate
from rpc_metrics.counts import count_accuracy
from rpc_metrics.io import load_json


def round_test_results(layout, r: int) -> Path:
    """Round ``r``'s predictions on the test split: its own file, or the pool's when the pool was the test split."""
    folder = layout.out / "kd" / f"round_{r:03d}"
    own = folder / "test_predictions.json"
    return own if own.is_file() else folder / "predictions.json"


def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if kind == "pct" else f"{value:.2f}"


def heldout_rows(layout, models: Sequence[tuple[str, str]]) -> list[dict]:
    """The source models on held-out synthesized images (their own domain): is the detector learning at all?"""
    gt = layout.dataset("synth_heldout")[0]
    rows = []
    for key, title in models:
        results, counts = layout.predictions(key, "synth_heldout")
        counts = load_json(counts)
        rows.append({"method": title, **evaluate(results, gt, levels=["averaged"], method=title).to_dict()["rows"][0],
                     # The counting view alone, rounded: every count of its classes right (one class: the total).
                     "count_classes": counts["count_classes"], "counts_right": count_accuracy(counts, gt)})
    return rows


def timings_table(records: dict[str, dict]) -> str:
    lines = ["| stage | budget | time | this run |", "| --- | ---: | ---: | --- |"]
    total = 0.0
    for record in records.values():
        total += record["seconds"]
        status = "done earlier (resumed)" if record.get("skipped") else "ran"
        lines.append(f"| {record['title']} | {clock(record['budget_s'])} | {clock(record['seconds'])} | {status} |")
    lines.append(f"| **all stages** | {clock(sum(r['budget_s'] for r in records.values()))} | **{clock(total)}** | |")
    return "\n".join(lines)


def machine() -> str:
    """CPU model and cores, memory, OS, Python and library versions, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo", encoding="utf-8") as f:
            memory = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB RAM"
    except OSError:
        memory = "memory unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for name in ("torch", "torchvision", "numpy", "opencv-python-headless", "opencv-python"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    gpu, bf16 = "no GPU used", "unknown"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
        # dpsnet and rpc-synth train and translate under bfloat16 autocast where the CPU has these units.
        units = cpu_bf16_units()
        bf16 = " and ".join(units) + " (bfloat16 autocast)" if units else "none (float32)"
    except ImportError:
        pass
    return (f"{cpu}, {cores} cores available, {memory}; CPU bfloat16 units: {bf16}; {gpu}; {platform.platform()}; "
            f"Python {sys.version.split()[0]}; " + ", ".join(versions))


def last_stage_errors(layout, recipe, models: Sequence[tuple[str, str]]):
    """The error breakdown (rpc_metrics.errors) of the last stage's test predictions at the transfer threshold."""
    test_gt, val_gt = layout.split("test")[0], layout.split("val")[0]
    if recipe.kd_rounds:
        folder = layout.out / "kd" / f"round_{recipe.kd_rounds:03d}"
        test_results, val_results = round_test_results(layout, recipe.kd_rounds), folder / "val_predictions.json"
    else:
        test_results, val_results = (layout.predictions(models[-1][0], s)[0] for s in ("test", "val"))
    return analyse_errors(test_results, test_gt, protocol="transfer", val_results=val_results, val_gt=val_gt)


def errors_section(report, method: str) -> str:
    """Why the last stage's test images are miscounted, with the reading of the table in words."""
    row = report.row("averaged")
    n = max(row.n_images, 1)
    kinds = {"missed": "every missed object were found", "wrong_sku": "every SKU were named right",
             "extra": "no extra detection were left"}
    best = max(kinds, key=lambda k: row.right_if[k])
    small = sum(b["missed"] for b in row.size_bins if b["hi"] is not None and b["hi"] <= 32)
    reading = (f"{method}: {100 * row.images_right / n:.1f}% of the test images are counted right; "
               f"{100 * row.right_if[best] / n:.1f}% would be if {kinds[best]} (the largest of the three). "
               f"{row.missed} of {row.objects} objects are missed ({small} of them shorter than 32 px on a side), "
               f"{row.wrong_sku} given the wrong SKU, and {row.extra} detections are extra.")
    return "\n\n".join([reading, report.to_markdown()])


def _or_preset(value) -> str:
    return "the preset's" if value is None else str(value)


def _time_limit(minutes) -> str:
    """A training run's time limit as the report says it (0: none, the steps decide)."""
    if minutes is None:
        return "the preset's time limit"
    return f"time limit {minutes} min" if minutes else "no time limit"


def _trunk(recipe) -> str:
    """How the source models start: the pretrained body, or a fine-tune of the shared Syn trunk."""
    if not recipe.source_trunk_steps:
        return ""
    return (f", each a fine-tune (peak learning rate {recipe.source_branch_lr}) of one shared trunk trained on Syn "
            f"for {recipe.source_trunk_steps} steps")


def kd_pool_line(layout, recipe) -> str:
    """Which images the distillation took its pseudo-labels from, and which protocol set each threshold."""
    loop = load_json(layout.out / "stages" / "kd.json").get("settings", {})
    transductive = loop.get("transductive") or not layout.has_pool()
    unlabeled = (f"the **unlabeled checkout photos** of `{layout.checkout}`" if layout.checkout else
                 "the world's **unlabeled pool** (`pool2019/`, never the test images)")
    pool = ("the **test images themselves** (transductive, as the paper does; their labels are dropped on load)"
            if transductive else unlabeled)
    calibrated = any(item.startswith("selection.target_precision=") and float(item.partition("=")[2]) > 0
                     for item in loop.get("set", []))
    where = layout.calibration_name()
    selection = (f"calibrated each round on {where} to the teacher's box precision"
                 if calibrated else "the fixed schedule of the run's kd-loop settings")
    return (f"Distillation pool: {pool}. Thresholds: the operating threshold of every row is chosen on {where} "
            f"(`transfer`); the selection's threshold is {selection}, and kd-loop's `selection.json` records it and "
            "the count scale of each round (no pool or test label is read).")


def render_lines(layout, metrics: dict) -> str:
    measure_path = layout.out / "render" / "measure.json"
    lines = ["| images | domain gap to the checkout images (before -> after) | products kept | new blobs per image "
             "| new soft foreground regions per image |", "| --- | ---: | ---: | ---: | ---: |"]
    if measure_path.is_file():
        for method, m in load_json(measure_path).items():
            lines.append(f"| {method} | {m['domain_gap_before']:.1f} -> {m['domain_gap_after']:.1f} | "
                         f"{fmt(m.get('products_kept_share'), 'pct')} | {m.get('new_blobs_per_image', 0):.2f} | "
                         f"{m.get('new_foreground_regions_per_image', 0):.2f} |")
        metrics["render"] = load_json(measure_path)
    return "\n".join(lines)


def heldout_lines(heldout: Sequence[dict]) -> str:
    return "\n".join(["| method | cAcc | ACD | mAP50 | mmAP | counting view right (its classes) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"] + [
        f"| {h['method']} | {fmt(h['cacc'], 'pct')} | {fmt(h['acd'], 'num')} | {fmt(h['map50'], 'pct')} | "
        f"{fmt(h['mmap'], 'pct')} | {fmt(h['counts_right'], 'pct')} ({h['count_classes']}) |" for h in heldout])


def intro(recipe, choice_title: str, calibration: str = "the val split") -> str:
    return (f"Seed {recipe.seed}; DPSNet preset `{recipe.preset}`; the three source models with the same budget each "
            f"({_or_preset(recipe.source_steps)} steps, {_time_limit(recipe.source_minutes)}){_trunk(recipe)}; "
            f"{recipe.kd_rounds} distillation rounds with kd-loop starting from **{choice_title}** (the source model "
            f"with the best cAcc on {calibration}), {_or_preset(recipe.kd_steps)} student steps per round "
            f"({_time_limit(recipe.kd_minutes)}).")


def closing_sections(heldout: Sequence[dict], pictures: Sequence[tuple[str, str]], records: dict[str, dict]) -> list[str]:
    """The report's last sections, with test labels or without: the held-out synthesized check, the figures, the
    timings and the machine."""
    return ["## In-domain check: source models on held-out synthesized images (oracle threshold)",
            heldout_lines(heldout),
            "## Figures",
            "\n\n".join(f"![{caption}]({path})\n\n*{caption}*" for caption, path in pictures),
            "## Timings", timings_table(records), "## Machine", machine()]
