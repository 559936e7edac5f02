"""The report's measurements beyond the ablation table: paired steps, the domain gap, synthesis against the
checkout images, the counting view under the shift. Test labels are read here for reporting only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rpc_metrics import compare, evaluate
from rpc_metrics.counts import count_error
from rpc_metrics.io import load_json

N_BOOT = 1000  # bootstrap resamples of the test images for every interval of the report
GAP_TARGET = 0.15  # the default world's Syn model must lose at least this much mAP50 on checkout images


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}"


def _interval(interval: Sequence[float] | None, scale: float = 100.0) -> str:
    return "-" if interval is None else f"[{scale * interval[0]:+.2f}, {scale * interval[1]:+.2f}]"


def paired_step(entry_a: dict, entry_b: dict, test_gt: Path, val_gt: Path, *, seed: int) -> dict:
    """B - A on the test images under the transfer protocol (each model's threshold from its own val results),
    averaged row, paired bootstrap: cAcc, ACD and mAP50 with their intervals, and the discordant images."""
    report = compare(entry_a["test"], entry_b["test"], test_gt, protocol="transfer", val_results_a=entry_a["val"],
                     val_results_b=entry_b["val"], val_gt=val_gt, levels=["averaged"], n_boot=N_BOOT, seed=seed)
    row = report.row("averaged")
    metric = {k: {"a": m.a, "b": m.b, "difference": m.difference, "interval": m.interval}
              for k, m in row.metrics.items() if k in ("cacc", "acd", "map50")}
    return {"a": entry_a["method"], "b": entry_b["method"], **metric, "only_a": row.only_a, "only_b": row.only_b,
            "cacc_above_zero": report.above_zero("cacc")}


def steps_table(steps: Sequence[dict]) -> str:
    lines = ["| step (B - A) | cAcc A -> B | B - A, cAcc [95%] | images right by A only / B only | "
             "B - A, ACD [95%] | B - A, mAP50 [95%] | cAcc gain beyond noise |",
             "| --- | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for s in steps:
        c, d, m = s["cacc"], s["acd"], s["map50"]
        lines.append(
            f"| {s['b']} - {s['a']} | {100 * c['a']:.2f}% -> {100 * c['b']:.2f}% | {_pts(c['difference'])} "
            f"{_interval(c['interval'])} | {s['only_a']} / {s['only_b']} | {d['difference']:+.2f} "
            f"{_interval(d['interval'], 1.0)} | {_pts(m['difference'])} {_interval(m['interval'])} | "
            f"{'yes' if s['cacc_above_zero'] else 'no'} |")
    return "\n".join(lines)


def gap_measurement(layout, key: str, title: str) -> dict:
    """The domain gap as the detector sees it: one source model's mAP50 and cAcc (oracle threshold) on held-out
    synthesized images (its own domain) against the checkout test images."""
    results, _ = layout.predictions(key, "synth_heldout")
    own = evaluate(results, layout.dataset("synth_heldout")[0], levels=["averaged"]).row("averaged")
    test = evaluate(layout.predictions(key, "test")[0], layout.split("test")[0], levels=["averaged"]).row("averaged")
    return {"model": title, "synth_map50": own.map50, "checkout_map50": test.map50, "synth_cacc": own.cacc,
            "checkout_cacc": test.cacc, "map50_gap": (own.map50 or 0.0) - (test.map50 or 0.0)}


def gap_lines(gap: dict) -> str:
    met = "yes" if gap["map50_gap"] >= GAP_TARGET else "no"
    return "\n".join([
        "| model | mAP50, held-out synthesized | mAP50, checkout test | gap | cAcc, synthesized / checkout (oracle) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| {gap['model']} | {100 * gap['synth_map50']:.2f}% | {100 * gap['checkout_map50']:.2f}% | "
        f"**{100 * gap['map50_gap']:.1f} points** | {100 * gap['synth_cacc']:.2f}% / {100 * gap['checkout_cacc']:.2f}% |",
        "", f"A real domain gap (at least {100 * GAP_TARGET:.0f} mAP50 points): **{met}**."])


def synthesis_lines(layout) -> str | None:
    """The synthesized training images against the checkout images they were fitted to (rpc-synth fit), side by
    side; None when synthesis was not fitted."""
    path = layout.out / "synthesis.json"
    if not path.is_file():
        return None
    from rpc_synth.stats import checkout_stats

    fit = load_json(path)
    target, made = fit["report"]["checkout"], checkout_stats(layout.dataset("synth")[0])

    def size(s: dict) -> str:
        p = s["product_size"]
        return f"{p['median']:.3f} [{p['p10']:.3f}, {p['p90']:.3f}]"

    def per_level(s: dict) -> str:
        return ", ".join(f"{name} {v['instances']['median']:g}" for name, v in s["levels"].items())

    rows = [("image side (px)", lambda s: f"{s['image_side']:.0f}"),
            ("product size, sqrt(box area) / image side: median [p10, p90]", size),
            ("objects per image by level (median)", per_level),
            ("each box's largest IoU with another (mean)", lambda s: f"{s['max_iou']:.3f}"),
            ("box coverage of the image (mean)", lambda s: f"{s['coverage']:.3f}")]
    lines = ["| statistic | checkout images (fitted to) | synthesized training images |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {cell(target)} | {cell(made)} |" for name, cell in rows]
    chosen = fit["generate"]
    settings = ", ".join(f"{k} {chosen[k]}" for k in ("size", "scale", "max_iou", "ranges") if k in chosen)
    warnings = [f"- {w}" for w in fit["report"].get("warnings", [])]
    return "\n".join([*lines, "", f"Fitted `rpc-synth generate` settings: {settings}.", *warnings])


def counting_shift(layout, models: Sequence[tuple[str, str]]) -> str:
    """The counting view's error on each image's total (before rounding) in its own domain and on the checkout
    images: a bias that the shift adds is what kd-loop's count scale corrects."""
    lines = ["| model | bias, held-out synthesized | bias, val | bias, test | MAE, test |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key, title in models:
        errors = {}
        for split in ("synth_heldout", "val", "test"):
            counts = load_json(layout.predictions(key, split)[1])
            gt = layout.dataset(split)[0] if split == "synth_heldout" else layout.split(split)[0]
            errors[split] = count_error(counts, gt)
        lines.append(f"| {title} | {errors['synth_heldout']['bias']:+.2f} | {errors['val']['bias']:+.2f} | "
                     f"{errors['test']['bias']:+.2f} | {errors['test']['mae']:.2f} |")
    return "\n".join(lines)


def count_scales(kd_dir: Path, rounds: int) -> str:
    """Each round's fitted count scale (kd-loop's selection.json), with the count error it fixed."""
    lines = ["| round | calibration split | count scale | teacher's count error before -> after | images kept "
             "(agreeing + fallback) |", "| ---: | --- | ---: | ---: | ---: |"]
    for r in range(1, rounds + 1):
        path = kd_dir / f"round_{r:03d}" / "selection.json"
        if not path.is_file():
            continue
        stats = load_json(path)
        scale = stats.get("count_calibration") or {}
        before, after = scale.get("count_error_before"), scale.get("count_error_after")
        errors = "-" if before is None else f"{before:.2f} -> {after:.2f}"
        agree, extra = stats.get("agreeing_images"), stats.get("fallback_images", 0)
        kept = f"{stats['selected_images']} ({agree} + {extra})" if agree is not None else str(stats["selected_images"])
        lines.append(f"| {r} | {scale.get('split', '-')} | {scale.get('scale', 1.0):.3f} ({scale.get('method', 'off')}) "
                     f"| {errors} | {kept} |")
    return "\n".join(lines)
