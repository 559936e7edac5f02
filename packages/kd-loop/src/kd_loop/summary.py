"""What a run's rounds recorded, as rows, a markdown table and ``summary.md``, with a loud note for every round
that kept fewer images than the minimum, leaned on the fallback, or kept none (its student is its teacher)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rpc_metrics.io import atomic_output, load_json


def selection_notes(r: int, stats: Mapping) -> list[str]:
    """The loud lines of round ``r``'s selection (``selection.json``'s ``stats``), in bold; empty when all is
    well. Example: ``**round 2: only 3 of 240 pool images agreed (minimum 24); 21 added by the fallback 'closest'**``.
    """
    notes = []
    kept, pool, minimum = stats["selected_images"], stats["pool_images"], stats.get("min_images", 0)
    agreed, added = stats.get("agreeing_images"), stats.get("fallback_images", 0)
    if agreed is not None and agreed < minimum:
        note = f"round {r}: only {agreed} of {pool} pool images agreed (minimum {minimum}); "
        if added:
            note += f"{added} added by the fallback '{stats['fallback']}'"
        elif stats.get("fallback") == "none":
            note += "none added (fallback 'none')"
        else:
            note += f"none added: the fallback '{stats.get('fallback')}' found no other image with enough labels"
        if stats.get("policy") == "random":
            note += f"; the random control drew as many ({kept})"
        notes.append(note)
    elif agreed is None and kept < minimum:
        notes.append(f"round {r}: only {kept} of {pool} pool images have enough labels (minimum {minimum})")
    if kept == 0:
        notes.append(f"round {r} selected no pool image: its student is its teacher (round {r - 1}'s model), "
                     f"so its results repeat round {r - 1}'s")
    return [f"**{note}**" for note in notes]


def round_rows(workdir: Path) -> list[dict]:
    """What each finished step of each round recorded, for the summary and ``kd-loop status``."""
    rows = []
    for folder in sorted(Path(workdir).glob("round_[0-9][0-9][0-9]")):
        row: dict[str, Any] = {"round": int(folder.name[6:]), "notes": []}
        if (folder / "selection.json").exists():
            row.update(load_json(folder / "selection.json"))
            row["notes"] = selection_notes(row["round"], row)
        if (folder / "metrics.json").exists():
            metrics = load_json(folder / "metrics.json")
            row["selection_quality"] = metrics.get("selection")
            row["transfer"] = metrics.get("transfer")
            row["oracle"] = metrics.get("oracle")
            row["test"] = metrics.get("test")
        row["done"] = (folder / "predictions.json").exists()
        rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _selected(row: Mapping) -> str:
    added = row.get("fallback_images") or 0
    return f"{row.get('selected_images', '-')}" + (f" ({added} by fallback)" if added else "")


def format_table(rows: list[dict]) -> str:
    """Markdown table of rounds (selection counts, selection precision, cAcc with the transfer and oracle
    protocols, on the pool and, when measured, the test split), then the rounds' loud notes as a list."""
    with_test = any(row.get("test") for row in rows)
    head = ["round", "selected images", "boxes", "ignore regions", "image precision", "box precision",
            "cAcc (transfer)", "cAcc (oracle)"] + (["test cAcc (transfer)", "test cAcc (oracle)"] if with_test else [])
    lines = ["| " + " | ".join([*head, "done"]) + " |", "|" + " ---: |" * len(head) + " :---: |"]
    for row in rows:
        quality, test = row.get("selection_quality") or {}, row.get("test") or {}
        cells = [row["round"], _selected(row), row.get("boxes", "-"), row.get("ignore_regions", "-"),
                 _pct(quality.get("image_precision")), _pct(quality.get("box_precision")),
                 _pct((row.get("transfer") or {}).get("cacc")), _pct((row.get("oracle") or {}).get("cacc"))]
        if with_test:
            cells += [_pct((test.get("transfer") or {}).get("cacc")), _pct((test.get("oracle") or {}).get("cacc"))]
        lines.append("| " + " | ".join(str(c) for c in [*cells, "yes" if row["done"] else "no"]) + " |")
    notes = [note for row in rows for note in row.get("notes", [])]
    return "\n".join(lines) + ("\n\n" + "\n".join(f"- {note}" for note in notes) if notes else "")


def write_summary(workdir: Path) -> Path:
    """Rewrite ``summary.md`` (atomically) from the rounds' artefacts."""
    path = Path(workdir) / "summary.md"
    text = ("# kd-loop summary\n\nRound 0 is the source model. Precision and cAcc use the pool's (and the test "
            "split's) ground truth, for reporting only.\n\n" + format_table(round_rows(workdir)) + "\n")
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path
