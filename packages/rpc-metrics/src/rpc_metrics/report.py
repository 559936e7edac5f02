"""The evaluation's table: one :class:`RowResult` per level and the :class:`EvaluationReport` that holds them, prints
them as the RPC papers' markdown table and writes them as JSON and per-category records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RowResult:
    """One row of the table. Fractions in [0, 1] for cAcc, mCIoU, mAP50, mmAP; None where undefined.

    ``intervals``: ``{metric: [lo, hi] or None}`` for cacc, mciou, acd, mccd, map50, mmap when bootstrap
    intervals were asked for, else None.
    """

    level: str
    n_images: int
    threshold: float
    cacc: float
    mciou: float | None
    acd: float
    mccd: float | None
    map50: float | None
    mmap: float | None
    undefined_mciou: int
    undefined_mccd: int
    per_category: dict[str, list] = field(default_factory=dict, repr=False)
    intervals: dict[str, list[float] | None] | None = None


@dataclass
class EvaluationReport:
    """The rows of an evaluation and how their thresholds were chosen.

    ``bootstrap``: ``{"n_boot", "seed", "confidence"}`` of the rows' intervals, None without intervals.
    ``compat``: ``"rpctool"`` when the rows reproduce rpctool 0.1.6 (counting metrics over the images with a
    detection at the row's threshold), else None.
    """

    rows: list[RowResult]
    protocol: str
    search: str | None
    method: str
    category_ids: list[int]
    category_names: list[str]
    validation_threshold: float | None = None
    bootstrap: dict | None = None
    compat: str | None = None

    def row(self, level: str) -> RowResult:
        for row in self.rows:
            if row.level == level:
                return row
        raise KeyError(f"no row {level!r}; rows are {[r.level for r in self.rows]}")

    def protocol_line(self) -> str:
        if self.protocol == "fixed":
            return f"protocol: fixed (threshold {self.rows[0].threshold:.4g} for every row)"
        if self.protocol == "transfer":
            return (f"protocol: transfer (threshold {self.validation_threshold:.4g} chosen by {self.search} search "
                    "on the validation files' averaged row, applied to every row)")
        if self.compat == "rpctool":
            return ("protocol: oracle (threshold chosen per row on the evaluated images, grid search), rpctool "
                    "compatibility: counting metrics over the images with a detection at the threshold")
        return f"protocol: oracle (threshold chosen per row on the evaluated images, {self.search} search)"

    def bootstrap_line(self) -> str:
        b = self.bootstrap
        return (f"intervals: {100 * b['confidence']:g}% percentile bootstrap over each row's images ({b['n_boot']} "
                f"resamples, seed {b['seed']}), at the row's threshold")

    def to_markdown(self) -> str:
        """The table of RPC papers, with the threshold of each row and notes on undefined categories."""
        head = "| level | method | cAcc | mCIoU | ACD | mCCD | mAP50 | mmAP | threshold |"
        lines = [self.protocol_line(), *([self.bootstrap_line()] if self.bootstrap else []), "", head,
                 "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        notes = []
        for r in self.rows:
            iv = r.intervals or {}
            lines.append(
                f"| {r.level} | {self.method} | {_pct(r.cacc, iv.get('cacc'))} | {_pct(r.mciou, iv.get('mciou'))} | "
                f"{_num(r.acd, iv.get('acd'))} | {_num(r.mccd, iv.get('mccd'))} | {_pct(r.map50, iv.get('map50'))} | "
                f"{_pct(r.mmap, iv.get('mmap'))} | {r.threshold:.4g} |"
            )
            if r.undefined_mciou or r.undefined_mccd:
                notes.append(
                    f"{r.level}: mCIoU over {len(self.category_ids) - r.undefined_mciou} categories "
                    f"({r.undefined_mciou} with no object and no prediction left out), mCCD over "
                    f"{len(self.category_ids) - r.undefined_mccd} ({r.undefined_mccd} without ground truth left out)"
                )
        if notes:
            lines += ["", *notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        rows = []
        for r in self.rows:
            row = asdict(r)
            row.pop("per_category")
            if row["intervals"] is None:
                row.pop("intervals")
            rows.append(row)
        out = {"protocol": self.protocol, "search": self.search, "method": self.method,
               "validation_threshold": self.validation_threshold, "rows": rows}
        if self.bootstrap:
            out["bootstrap"] = self.bootstrap
        if self.compat:
            out["compat"] = self.compat
        return out

    def per_category_records(self) -> list[dict]:
        """One record per (row, category): counts, CCD, CIoU, AP50, AP (None where undefined)."""
        records = []
        for r in self.rows:
            columns = r.per_category
            for k, (cid, name) in enumerate(zip(self.category_ids, self.category_names, strict=True)):
                records.append({"level": r.level, "category_id": cid, "name": name,
                                **{key: values[k] for key, values in columns.items()}})
        return records


def _pct(value: float | None, interval: list[float] | None = None) -> str:
    """``34.17%``, or ``34.17% [25.83, 42.50]`` with an interval (in percent)."""
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" + ("" if interval is None else f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]")


def _num(value: float | None, interval: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]")
