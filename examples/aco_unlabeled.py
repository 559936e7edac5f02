"""The report of a run whose data has no test labels (a store's own products and photos): what can be shown without
them - the split that chose every threshold, the source models there, kd-loop's selection on the unlabeled
photos, the rendering, the held-out synthesized check, pictures and timings - and no accuracy rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aco_report import data_figures, val_score
from aco_sections import (
    closing_sections,
    fmt,
    heldout_rows,
    intro,
    kd_pool_line,
    render_lines,
)

from rpc_metrics.io import atomic_output, load_json, write_json


def calibration_lines(layout, models: Sequence[tuple[str, str]], choice: str) -> tuple[str, list[dict]]:
    """The source models on the split that chose thresholds and the source model (oracle threshold there)."""
    rows, lines = [], ["| source model | cAcc | mAP50 | chosen |", "| --- | ---: | ---: | :---: |"]
    for key, title in models:
        cacc, map50 = val_score(layout, key)
        rows.append({"method": title, "cacc": cacc, "map50": map50})
        lines.append(f"| {title} | {fmt(cacc, 'pct')} | {fmt(map50, 'pct')} | {'yes' if key == choice else ''} |")
    return "\n".join(lines), rows


def write_unlabeled_report(layout, recipe, records: dict[str, dict], models: Sequence[tuple[str, str]], *,
                           title: str) -> Path:
    """``report.md`` and ``metrics.json`` of a run without test labels (atomically)."""
    choice = load_json(layout.out / "kd" / "source_choice.json")["source_model"]
    choice_title = dict(models)[choice]
    where = layout.calibration_name()
    table, calibration = calibration_lines(layout, models, choice)
    heldout = heldout_rows(layout, models)
    metrics = {"title": title, "source_model": choice, "calibration": where, "calibration_rows": calibration,
               "heldout_synth": heldout, "test_labels": False,
               "timings": {name: r["seconds"] for name, r in records.items()}}
    rendering = render_lines(layout, metrics)
    pictures = data_figures(layout, recipe)
    kd_summary = (layout.out / "kd" / "summary.md").read_text(encoding="utf-8").split("\n\n", 2)[-1].strip()
    write_json(metrics, layout.out / "metrics.json", indent=2)
    sections = [
        f"# {title}", intro(recipe, choice_title, where), kd_pool_line(layout, recipe),
        "## No test labels: no accuracy rows",
        f"The data has no labelled test split, so this report shows no checkout accuracy. Every threshold (the "
        f"operating one and the selection's), the source model and kd-loop's count scale were chosen on {where}; "
        "to measure accuracy, label some checkout photos as an RPC test split (`instances_test2019.json` with "
        "levels) and run the pipeline again.",
        f"## The source models on {where} (oracle threshold there: how the source model was chosen)",
        table,
        "## Distillation rounds (kd-loop summary; no precision without labels)",
        kd_summary,
        "## Rendering: how far the translated images moved toward the checkout photos",
        rendering,
        *closing_sections(heldout, pictures, records),
    ]
    path = layout.out / "report.md"
    with atomic_output(path) as tmp:
        tmp.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path
