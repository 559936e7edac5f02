"""Evaluation of every stage with rpc-metrics and the report folder: report.md, metrics.json, figures/.

Protocols: `transfer` (the headline: the score threshold that maximises cAcc on the val split's averaged row,
applied to every row of the test split) and `oracle` (chosen on the test images themselves, as published
RPC papers do) beside it. The test labels are read here, after everything else ran: nothing computed
here flows back into training, model choice or pseudo-label selection.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aco_analysis
import aco_figures
import aco_receipts
from aco_sections import (
    closing_sections,
    errors_section,
    fmt,
    heldout_rows,
    intro,
    kd_pool_line,
    last_stage_errors,
    render_lines,
    round_test_results,
)

from rpc_metrics import evaluate
from rpc_metrics.io import atomic_output, image_path, load_json, write_json

LEVELS = ("easy", "medium", "hard", "averaged")
COLUMNS = (("cAcc", "cacc", "pct"), ("mCIoU", "mciou", "pct"), ("ACD", "acd", "num"), ("mCCD", "mccd", "num"),
           ("mAP50", "map50", "pct"), ("mmAP", "mmap", "pct"))


def val_score(layout, key: str) -> tuple[float, float]:
    """(cAcc, mAP50) of a source model on the val split's averaged row (oracle threshold on val)."""
    row = evaluate(layout.predictions(key, "val")[0], layout.split("val")[0], levels=["averaged"]).row("averaged")
    return row.cacc, row.map50 or 0.0


def best_source(layout, keys: Sequence[str]) -> str:
    """The source model with the best val cAcc (then val mAP50; then the later, richer data mix): no test label."""
    scores = {key: val_score(layout, key) for key in keys}
    return max(reversed(keys), key=lambda k: scores[k])


def transfer_threshold(val_results: Path, val_gt: Path) -> float:
    """The threshold the transfer protocol applies to test: cAcc's optimum on val's averaged row."""
    return evaluate(val_results, val_gt, levels=["averaged"], compute_map=False).row("averaged").threshold


def prediction_entries(layout, recipe, models: Sequence[tuple[str, str]]) -> list[dict]:
    """Every stage's test and val predictions: [{method, stage, test, val}, ...], controls last when they ran."""
    entries = [{"method": title, "stage": f"source_{key}", "test": layout.predictions(key, "test")[0],
                "val": layout.predictions(key, "val")[0]} for key, title in models]
    for r in range(1, recipe.kd_rounds + 1):
        entries.append({"method": f"+ distillation round {r}", "stage": f"kd_round_{r}",
                        "test": round_test_results(layout, r),
                        "val": layout.out / "kd" / f"round_{r:03d}" / "val_predictions.json"})
    for control in control_entries(layout, recipe):
        entries.append(control)
    return entries


def control_entries(layout, recipe) -> list[dict]:
    """The same-compute controls of the last round (`--controls`), when their predictions exist."""
    out = layout.out / "controls"
    rounds = recipe.kd_rounds
    random_round = out / "random" / f"round_{rounds:03d}"
    entries = []
    if (random_round / "val_predictions.json").is_file():
        test = random_round / "test_predictions.json"
        entries.append({"method": f"control: random selection, round {rounds}", "stage": "control_random",
                        "test": test if test.is_file() else random_round / "predictions.json",
                        "val": random_round / "val_predictions.json"})
    if (out / "steps" / "test_results.json").is_file():
        entries.append({"method": "control: as many more steps on synthesized data", "stage": "control_steps",
                        "test": out / "steps" / "test_results.json", "val": out / "steps" / "val_results.json"})
    return entries


def evaluated_rows(layout, recipe, entries: Sequence[dict]) -> list[dict]:
    """Every entry's test predictions with both protocols (the transfer one with bootstrap intervals over the test
    images): [{method, stage, transfer, oracle}, ...]."""
    test_gt, val_gt = layout.split("test")[0], layout.split("val")[0]
    rows = []
    for e in entries:
        transfer = evaluate(e["test"], test_gt, protocol="transfer", val_results=e["val"], val_gt=val_gt,
                            method=e["method"], intervals=aco_analysis.N_BOOT, interval_seed=recipe.seed)
        oracle = evaluate(e["test"], test_gt, protocol="oracle", method=e["method"])
        rows.append({"method": e["method"], "stage": e["stage"], "transfer": transfer.to_dict(),
                     "oracle": oracle.to_dict()})
    return rows


def paired_steps(layout, recipe, entries: Sequence[dict], models: Sequence[tuple[str, str]], choice: str) -> list[dict]:
    """Each step of the method as a paired comparison on the test images: the two translations against Syn, the
    first round against its teacher, each round against the one before, the last round against Syn+Render and
    against each control."""
    by_method = {e["method"]: e for e in entries}
    titles = dict(models)
    syn, render = titles[models[0][0]], titles[models[-1][0]]
    pairs = [(syn, t) for _, t in models[1:]]
    rounds = [f"+ distillation round {r}" for r in range(1, recipe.kd_rounds + 1)]
    if rounds:
        pairs += [(titles[choice], rounds[0]), *list(itertools.pairwise(rounds))]
        pairs += [(render, rounds[-1]), (syn, rounds[-1])]
        pairs += [(e["method"], rounds[-1]) for e in control_entries(layout, recipe)]
    test_gt, val_gt = layout.split("test")[0], layout.split("val")[0]
    return [aco_analysis.paired_step(by_method[a], by_method[b], test_gt, val_gt, seed=recipe.seed) for a, b in pairs]


def _row(report: dict, level: str) -> dict | None:
    return next((r for r in report["rows"] if r["level"] == level), None)


def _cell(values: dict, key: str, kind: str) -> str:
    """A metric's value, with its bootstrap interval where the evaluation computed one (cAcc and mAP50 shown)."""
    interval = (values.get("intervals") or {}).get(key) if key in ("cacc", "map50") else None
    if interval is None or values[key] is None:
        return fmt(values[key], kind)
    return f"{fmt(values[key], kind)} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def ablation_table(rows: Sequence[dict], protocol: str) -> str:
    """The paper's table: one block of methods per level (easy, medium, hard, averaged)."""
    head = "| level | method | " + " | ".join(c for c, _, _ in COLUMNS) + " | threshold |"
    lines = [head, "| --- | --- | " + " | ".join("---:" for _ in COLUMNS) + " | ---: |"]
    for level in LEVELS:
        for row in rows:
            values = _row(row[protocol], level)
            if values is None:
                continue
            cells = " | ".join(_cell(values, k, kind) for _, k, kind in COLUMNS)
            lines.append(f"| {level} | {row['method']} | {cells} | {values['threshold']:.3f} |")
    return "\n".join(lines)


def checks(rows: Sequence[dict], steps: Sequence[dict], models: Sequence[tuple[str, str]], last_method: str) -> list[str]:
    """The acceptance, stated from the numbers (transfer protocol, averaged row, paired 95% intervals)."""
    cacc = {row["method"]: _row(row["transfer"], "averaged")["cacc"] for row in rows}
    syn_title, render_title = models[0][1], models[-1][1]
    syn, render, last = cacc[syn_title], cacc[render_title], cacc[last_method]
    step = {(s["a"], s["b"]): s for s in steps}

    def beyond(a: str, b: str) -> str:
        s = step.get((a, b))
        return "n/a" if s is None else "yes" if s["cacc_above_zero"] else "no"

    lines = [
        f"- cAcc rises from Syn ({100 * syn:.2f}%) to Syn+Render ({100 * render:.2f}%) to the last round "
        f"({100 * last:.2f}%, {last_method}): **{'yes' if syn < render < last else 'no'}**; each step's paired 95% "
        f"interval above zero: Syn+Render - Syn **{beyond(syn_title, render_title)}**, last round - Syn+Render "
        f"**{beyond(render_title, last_method)}**.",
    ]
    controls = [s for s in steps if s["a"].startswith("control:")]
    if controls:
        best = max(controls, key=lambda s: s["cacc"]["a"])
        lines.append(f"- the last round against the better control ({best['a']}, {100 * best['cacc']['a']:.2f}%): "
                     f"{_pts(best['cacc']['difference'])} points, paired interval above zero: "
                     f"**{'yes' if best['cacc_above_zero'] else 'no'}** (goal +10 points).")
    lines.append(f"- last round >= 40% cAcc: **{'yes' if last >= 0.4 else 'no'}**; the compass, 80%: "
                 f"**{'yes' if last >= 0.8 else f'no, {100 * (0.8 - last):.1f} points short'}**.")
    return lines


def _pts(value: float) -> str:
    return f"{100 * value:+.2f}"


def data_figures(layout, recipe) -> list[tuple[str, str]]:
    """Write the pictures that need no labels; return (caption, relative path) pairs."""
    out = layout.out / "figures"
    made = []
    train_images = layout.split("train")[1]
    aco_figures.exemplar_with_mask(layout.out / "poses.json", train_images, out / "exemplar_mask.png")
    made.append(("An exemplar, its refined mask (rpc-synth masks) and the cut-out product.",
                 "figures/exemplar_mask.png"))
    synth = load_json(layout.dataset("synth")[0])["images"][0]["file_name"]
    split = "test" if layout.has_split("test") else "pool"
    photo = load_json(layout.split(split)[0])["images"][0]["file_name"]
    pairs = [("synthesized", image_path(layout.dataset("synth")[1], synth)),
             ("histogram matched", image_path(layout.dataset("histogram")[1], synth)),
             ("rendered", image_path(layout.dataset("render")[1], synth)),
             (f"a {split} checkout image", image_path(layout.split(split)[1], photo))]
    aco_figures.synthesized_and_rendered(pairs, out / "synth_render.png")
    made.append(("A synthesized image, its histogram-matched and rendered versions, and a real-domain "
                 "checkout image.", "figures/synth_render.png"))
    before, after = out / "vis_before", out / "vis_after"
    names = sorted(p.name for p in before.glob("*.png"))
    if names:
        aco_figures.before_after([(before / n, after / n) for n in names],
                                 ("before distillation (source model)", f"after round {recipe.kd_rounds}"),
                                 out / "detections_before_after.png")
        made.append((f"{split.capitalize()} images with detections (at the transfer threshold) and the counting "
                     "view's density map, before and after distillation (dpsnet visualize).",
                     "figures/detections_before_after.png"))
    return made


def figures(layout, recipe, rows: Sequence[dict]) -> list[tuple[str, str]]:
    """Write the PNGs, the metrics per stage included; return (caption, relative path) pairs."""
    out = layout.out / "figures"
    made = data_figures(layout, recipe)
    series = {name: [100 * v if (v := _row(row["transfer"], "averaged")[key]) is not None else None for row in rows]
              for name, key in (("cAcc", "cacc"), ("mCIoU", "mciou"), ("mAP50", "map50"), ("mmAP", "mmap"))}
    aco_figures.metrics_plot([_short(row["method"]) for row in rows], series, out / "metrics_per_round.png",
                             title="test, transfer protocol, averaged row")
    made.append(("Metrics per stage and distillation round (test split, transfer protocol).",
                 "figures/metrics_per_round.png"))
    return made


def last_stage_files(layout, recipe, models: Sequence[tuple[str, str]]) -> dict[str, Path]:
    """The last stage's checkpoint, val and test predictions and test counts (the last round, else Syn+Render)."""
    if recipe.kd_rounds:
        folder = layout.out / "kd" / f"round_{recipe.kd_rounds:03d}"
        test = round_test_results(layout, recipe.kd_rounds)
        counts = folder / ("test_counts.json" if test.name.startswith("test_") else "counts.json")
        return {"checkpoint": Path(load_json(folder / "fit.json")["checkpoint"]),
                "val": folder / "val_predictions.json", "test": test, "test_counts": counts}
    key = models[-1][0]
    return {"checkpoint": layout.model(key) / "last.pt", "val": layout.predictions(key, "val")[0],
            "test": layout.predictions(key, "test")[0], "test_counts": layout.predictions(key, "test")[1]}


def flag_section(layout, recipe, models, metrics: dict) -> list[str]:
    """The receipt's flag on the last stage's test images at its transfer threshold (aco_receipts)."""
    files = last_stage_files(layout, recipe, models)
    threshold = transfer_threshold(files["val"], layout.split("val")[0])
    table, numbers = aco_receipts.flag_table(
        aco_receipts.receipt_flags(files["test"], files["test_counts"], layout.split("test")[0], threshold))
    metrics["receipt_flag"] = {"threshold": threshold, **numbers}
    return ["## The receipt's flag: when to call a cashier (last stage, test split)",
            f"`dpsnet.Counter` flags an image (`consistent=False`) when the detector's count at the operating "
            f"threshold ({threshold:.3f}, chosen on {layout.calibration_name()}) differs from the counting view's "
            "count rounded half up. A store checks the flagged trays by hand; the unflagged ones are what the "
            "system answers alone (`bundle.pt`, `dpsnet count`).", table]


def _short(method: str) -> str:
    return method.replace("+ distillation round ", "KD round ").replace("histogram", "hist")


def _finite(value: Any) -> bool:
    return value is None or not isinstance(value, float) or math.isfinite(value)


def _measurements(layout, recipe, models, steps, metrics: dict) -> list[str]:
    """The sections on the domain gap, synthesis against the checkout images and the counting view."""
    gap = aco_analysis.gap_measurement(layout, *models[0])
    metrics["gap"] = gap
    sections = ["## The domain gap (the Syn model in its own domain and on checkout images)", aco_analysis.gap_lines(gap)]
    synthesis = aco_analysis.synthesis_lines(layout)
    if synthesis:
        sections += ["## Synthesis fitted to the checkout images (rpc-synth fit, from the val split's boxes)",
                     synthesis]
    sections += [
        "## The counting view under the shift",
        "Mean (counted - true) objects per image, before rounding: a bias the checkout domain adds is what "
        "kd-loop's count scale (fitted on val each round) corrects before the agreement check.",
        aco_analysis.counting_shift(layout, models),
        aco_analysis.count_scales(layout.out / "kd", recipe.kd_rounds)]
    return sections


def write_report(layout, recipe, records: dict[str, dict], models: Sequence[tuple[str, str]], *, title: str) -> Path:
    """Evaluate every stage, draw the figures and write ``report.md`` and ``metrics.json`` (atomically)."""
    choice = load_json(layout.out / "kd" / "source_choice.json")["source_model"]
    choice_title = dict(models)[choice]
    entries = prediction_entries(layout, recipe, models)
    rows = evaluated_rows(layout, recipe, entries)
    method_rows = [row for row in rows if not row["stage"].startswith("control")]
    last_method = method_rows[-1]["method"]
    steps = paired_steps(layout, recipe, entries, models, choice)
    heldout = heldout_rows(layout, models)
    errors = last_stage_errors(layout, recipe, models)
    pictures = figures(layout, recipe, method_rows)
    kd_summary = (layout.out / "kd" / "summary.md").read_text(encoding="utf-8").split("\n\n", 2)[-1].strip()
    metrics = {"title": title, "source_model": choice, "stages": rows, "paired_steps": steps, "heldout_synth": heldout,
               "errors_last_stage": errors.to_dict(), "timings": {name: r["seconds"] for name, r in records.items()}}
    rendering = render_lines(layout, metrics)
    measurements = _measurements(layout, recipe, models, steps, metrics)
    bad = [(row["method"], k) for row in rows for p in ("transfer", "oracle") for r in row[p]["rows"]
           for k, v in r.items() if not _finite(v)]
    if bad:
        raise FloatingPointError(f"non-finite metric {bad[0]}")
    flag = flag_section(layout, recipe, models, metrics)
    write_json(metrics, layout.out / "metrics.json", indent=2)
    sections = [
        f"# {title}", intro(recipe, choice_title, layout.calibration_name()), kd_pool_line(layout, recipe),
        "## Ablation (test split, protocol `transfer`: the headline)",
        f"The score threshold is the one maximising cAcc on the averaged row of {layout.calibration_name()}, applied "
        "to every row of the test split (a store knows neither the test labels nor an image's level). Pseudo-labels "
        "are selected without any label, and the source model for distillation is chosen there. Rows `+ distillation "
        f"round r` continue from {choice_title}. Syn+histogram and Syn+Render train on half synthesized, half "
        f"translated images. cAcc and mAP50 carry a 95% bootstrap interval over the test images "
        f"({aco_analysis.N_BOOT} resamples, seed {recipe.seed}).",
        ablation_table(rows, "transfer"),
        "## Each step, paired on the same test images",
        "B - A with a paired bootstrap interval (the same resampled images for both models, each at its own "
        "val-chosen threshold); a step counts only when its whole interval lies above zero.",
        aco_analysis.steps_table(steps),
        "## Checks",
        "\n".join(checks(rows, steps, models, last_method)),
        "## The same predictions, protocol `oracle` (threshold chosen on the test images, as papers report)",
        "For comparison with published numbers only: this threshold uses the test labels.",
        ablation_table(rows, "oracle"),
        *measurements,
        "## What holds cAcc back (last stage, test split, transfer threshold)",
        "From `rpc-metrics errors` (the test labels, for reporting only): each detection above the threshold takes "
        "the object of its own SKU it overlaps most (IoU >= 0.5); the rest are matched across SKUs (wrong SKU); "
        "objects left are missed and detections left are extra.",
        errors_section(errors, last_method),
        *flag,
        "## Distillation rounds (kd-loop summary; precision measured with the pool's labels, for reporting only)",
        kd_summary,
        "## Rendering: how far the translated images moved toward the checkout domain",
        "Domain gap: the Fréchet distance between colour and texture feature statistics of the synthesized (or "
        "translated) images and the checkout images' pixels (rpc-synth's README defines it); products kept: "
        "foreground inside each box still there after translation (IoU >= 0.5); new blobs: product-like "
        "(crisp-edged) foreground that appeared outside every box; new soft foreground regions: all foreground "
        "that appeared outside every box, soft-edged tray texture included.",
        rendering,
        *closing_sections(heldout, pictures, records),
        "## Files",
        "`metrics.json` (every row, both protocols, all levels, the paired steps), `stages/*.json` (each stage's "
        "settings and time), `models/*/` (source runs), `kd/` (kd-loop's rounds and `summary.md`), `controls/` "
        "(with `--controls`), `figures/`.",
    ]
    path = layout.out / "report.md"
    with atomic_output(path) as tmp:
        tmp.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path
