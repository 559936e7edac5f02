"""A training run's records, written by rank 0: a progress line per log step and a line per event (stdout and
``log.txt``), a JSON object per line (``log.jsonl``), a ``results.csv`` row per log step (step, lr, each loss,
images/s) and the loss and metric curves (``results.png``, :mod:`dpsnet.training.curves`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rpc_metrics.files import naming_os_errors

from ..progress import progress_text
from .curves import draw_curves


def _append_csv(path: Path, row: dict) -> None:
    """One row under the file's header; a row with new columns rewrites the file with them added (empty above)."""
    header = None
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    if header == list(row):
        with naming_os_errors(path), open(path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(row.values())
        return
    rows = []
    if header:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    columns = [*(header or []), *(k for k in row if k not in (header or []))]
    with naming_os_errors(path), open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows([*rows, row])


def step_line(record: dict, label: str, unit: str) -> str:
    """A log step's progress line: ``train: step 20/1500, lr 0.00040, loss 1.2345 (objectness 0.0432, ...),
    epoch 0, 14.1 img/s, eta 0:05:12``."""
    terms = ", ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in record.items() if k.startswith("loss_"))
    extras = [f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
              if k not in ("type", "step", "max_steps", "lr", "loss", "images_per_s", "eta_s", "elapsed_s")
              and not k.startswith("loss_")]
    details = ", ".join([f"lr {record['lr']:.5f}", f"loss {record['loss']:.4f}" + (f" ({terms})" if terms else ""),
                         *extras])
    return progress_text(label, f"step {record['step']}/{record['max_steps']}", record["images_per_s"], unit,
                         record["eta_s"], details)


class RunLog:
    """Where a run's records go (any of the paths may be None: not written); ``enabled`` is False on ranks > 0."""

    def __init__(self, *, text: Path | None = None, jsonl: Path | None = None, table: Path | None = None,
                 curves: Path | None = None, enabled: bool = True, echo: bool = True):
        self.text, self.jsonl, self.table, self.curves = text, jsonl, table, curves
        self.enabled, self.echo = enabled, echo
        self.evals: list[dict] = []

    @classmethod
    def in_folder(cls, out_dir: Path, *, enabled: bool = True, echo: bool = True) -> RunLog:
        """``log.txt``, ``log.jsonl``, ``results.csv`` and ``results.png`` in ``out_dir``."""
        return cls(text=out_dir / "log.txt", jsonl=out_dir / "log.jsonl", table=out_dir / "results.csv",
                   curves=out_dir / "results.png", enabled=enabled, echo=echo)

    def write(self, record: dict, line: str) -> None:
        """An event (start, evaluation, end): its JSON object and its text line."""
        if not self.enabled:
            return
        if record.get("type") == "eval":
            self.evals.append(record)
        if self.jsonl is not None:
            with naming_os_errors(self.jsonl), open(self.jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.text is not None:
            with naming_os_errors(self.text), open(self.text, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        if self.echo:
            print(line, flush=True)

    def step(self, record: dict, label: str, unit: str) -> None:
        """A log step: its progress line, its JSON object and its ``results.csv`` row."""
        self.write(record, step_line(record, label, unit))
        if self.enabled and self.table is not None:
            _append_csv(self.table, {k: v for k, v in record.items() if k not in ("type", "max_steps")})

    def draw(self) -> None:
        """``results.png`` from ``results.csv`` and the evaluations (all of them since the run began)."""
        if not (self.enabled and self.table is not None and self.curves is not None and self.table.is_file()):
            return
        with open(self.table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        evals = self.evals
        if self.jsonl is not None and self.jsonl.is_file():
            with open(self.jsonl, encoding="utf-8") as f:
                evals = [r for r in map(json.loads, f) if r.get("type") == "eval"]
        draw_curves(rows, evals, self.curves)
