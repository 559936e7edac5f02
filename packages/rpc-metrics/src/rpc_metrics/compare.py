"""Paired comparison of two results files on the same checkout images: B - A with a bootstrap interval.

Both models are evaluated on the same ground truth, each at its own threshold chosen by the protocol
(``transfer``: each on its own validation results; ``fixed``: given; ``oracle``: each on the test images),
fixed for the bootstrap. Every resample draws the SAME images for A and B (:mod:`rpc_metrics.bootstrap`), and
the interval is that of the differences ``B - A``: an image that is hard for both moves both values, not their
difference, so the paired interval is narrower than two separate intervals suggest. For cAcc the report also
counts the discordant images (right by one model only), the images that decide the difference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rpc_metrics import cocoeval
from rpc_metrics.bootstrap import (
    METRICS,
    check_bootstrap,
    percentile_interval,
    resample_indices,
    row_resamples,
)
from rpc_metrics.counting import counting_metrics
from rpc_metrics.evaluate import (
    _finite,
    _prepare_rows,
    _Prepared,
    _row_count_matrices,
    _row_masks,
    _row_threshold,
    check_protocol,
)
from rpc_metrics.io import _load

LABELS = {"cacc": "cAcc", "mciou": "mCIoU", "acd": "ACD", "mccd": "mCCD", "map50": "mAP50", "mmap": "mmAP"}
PERCENT = ("cacc", "mciou", "map50", "mmap")


@dataclass
class MetricDifference:
    """One metric of one row: A's and B's values, ``difference = b - a`` and its interval ``[lo, hi]``."""

    a: float | None
    b: float | None
    difference: float | None
    interval: list[float] | None


@dataclass
class ComparisonRow:
    """One level: thresholds, metrics, and the images counted exactly by A only, B only, both, neither."""

    level: str
    n_images: int
    threshold_a: float
    threshold_b: float
    metrics: dict[str, MetricDifference]
    only_a: int
    only_b: int
    both: int
    neither: int


@dataclass
class ComparisonReport:
    """The rows of a paired comparison and how they were made."""

    rows: list[ComparisonRow]
    protocol: str
    search: str | None
    n_boot: int
    seed: int
    confidence: float
    name_a: str = "A"
    name_b: str = "B"
    validation_thresholds: tuple[float, float] | None = None

    def row(self, level: str) -> ComparisonRow:
        for row in self.rows:
            if row.level == level:
                return row
        raise KeyError(f"no row {level!r}; rows are {[r.level for r in self.rows]}")

    def above_zero(self, metric: str, level: str = "averaged") -> bool:
        """True when the whole interval of B - A is above 0 (B higher: better for cAcc, mCIoU, mAP50, mmAP)."""
        interval = self.row(level).metrics[metric].interval
        return interval is not None and interval[0] > 0

    def below_zero(self, metric: str, level: str = "averaged") -> bool:
        """True when the whole interval of B - A is below 0 (B lower: better for ACD and mCCD)."""
        interval = self.row(level).metrics[metric].interval
        return interval is not None and interval[1] < 0

    def protocol_line(self) -> str:
        first = self.rows[0] if self.rows else None
        if self.protocol == "fixed" and first:
            return f"protocol: fixed (thresholds A {first.threshold_a:.4g}, B {first.threshold_b:.4g} for every row)"
        if self.protocol == "transfer":
            a, b = self.validation_thresholds
            return (f"protocol: transfer (thresholds chosen by {self.search} search on each model's validation "
                    f"results, averaged row: A {a:.4g}, B {b:.4g}, applied to every row)")
        return (f"protocol: {self.protocol} (each model's threshold chosen per row on the evaluated images, "
                f"{self.search} search)")

    def to_markdown(self) -> str:
        """A table of A, B and B - A [interval] per row and metric, then the cAcc discordant images."""
        lines = [f"A: {self.name_a}", f"B: {self.name_b}", self.protocol_line(),
                 f"paired bootstrap: {self.n_boot} resamples of each row's images (seed {self.seed}), the same for A "
                 f"and B; {100 * self.confidence:g}% percentile interval of B - A (cAcc, mCIoU, mAP in points)", "",
                 f"| level | metric | A | B | B - A | {100 * self.confidence:g}% interval |",
                 "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in self.rows:
            for metric, m in r.metrics.items():
                lines.append(f"| {r.level} | {LABELS[metric]} | {_value(metric, m.a)} | {_value(metric, m.b)} | "
                             f"{_signed(metric, m.difference)} | {_interval(metric, m.interval)} |")
        lines += ["", "| level | images | right by A only | right by B only | right by both | by neither | "
                      "threshold A | threshold B |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in self.rows:
            lines.append(f"| {r.level} | {r.n_images} | {r.only_a} | {r.only_b} | {r.both} | {r.neither} | "
                         f"{r.threshold_a:.4g} | {r.threshold_b:.4g} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.validation_thresholds is not None:
            out["validation_thresholds"] = dict(zip("ab", self.validation_thresholds, strict=True))
        return out


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT else 1.0


def _value(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if metric in PERCENT else f"{v:.2f}"


def _signed(metric: str, v: float | None) -> str:
    return "-" if v is None else f"{_scale(metric) * v:+.2f}"


def _interval(metric: str, interval: list[float] | None) -> str:
    return "-" if interval is None else f"[{_signed(metric, interval[0])}, {_signed(metric, interval[1])}]"


def _check(protocol: str, threshold_a: Any, threshold_b: Any, val_results_a: Any, val_results_b: Any,
           val_gt: Any) -> None:
    if protocol == "fixed" and (threshold_a is None or threshold_b is None):
        raise ValueError("protocol 'fixed' needs threshold_a and threshold_b (one score threshold per model)")
    if protocol == "transfer" and (val_results_a is None or val_results_b is None or val_gt is None):
        raise ValueError("protocol 'transfer' needs val_results_a, val_results_b and val_gt (each model's "
                         "results on the validation images, and their ground truth)")
    for name, value in (("threshold_a", threshold_a), ("threshold_b", threshold_b)):
        if value is not None and not _finite(value):
            raise ValueError(f"{name} should be a finite number, got {value!r}")


@dataclass
class _Model:
    """One side of the comparison: its prepared files, transfer threshold and matching (None without mAP)."""

    prepared: _Prepared
    validation_threshold: float | None
    matching: cocoeval.Matching | None


def _model(results: Any, gt_data: dict, gt_name: str, levels: Sequence[str] | None, protocol: str,
           val_results: Any, val_gt: Any, search: str, compute_map: bool) -> tuple[_Model, Sequence[str]]:
    p, _, _, levels, validation_threshold = _prepare_rows(results, gt_data, levels, protocol, val_results, val_gt,
                                                          search, gt_source=gt_name)
    matching = cocoeval.match(p.gt, p.dt, len(p.category_ids)) if compute_map else None
    return _Model(p, validation_threshold, matching), levels


def _point_values(pred: np.ndarray, gt: np.ndarray, model: _Model, mask: np.ndarray) -> dict[str, float | None]:
    values = counting_metrics(pred, gt).as_dict()
    out = {metric: values.get(metric) for metric in METRICS}
    if model.matching is not None:
        out["mmap"], out["map50"] = cocoeval.summarize(
            cocoeval.precision_table(model.matching, mask, len(model.prepared.category_ids)))
    return out


def _compare_row(level: str, mask: np.ndarray, a: _Model, b: _Model, thresholds: tuple[float, float],
                 n_boot: int, seed: int, confidence: float) -> ComparisonRow:
    """Point values, paired differences on the same resamples, and discordant images of one row."""
    n_categories = len(a.prepared.category_ids)
    indices = resample_indices(int(mask.sum()), n_boot, seed)
    points, resampled, exact = [], [], []
    for model, threshold in zip((a, b), thresholds, strict=True):
        pred, gt = _row_count_matrices(model.prepared, mask, threshold)
        layout = None if model.matching is None else cocoeval.category_layout(model.matching, n_categories, mask)
        points.append(_point_values(pred, gt, model, mask))
        resampled.append(row_resamples(pred, gt, indices, layout))
        exact.append((pred == gt).all(axis=1))
    metrics = {}
    for metric in METRICS:
        va, vb = points[0][metric], points[1][metric]
        differences = resampled[1][metric] - resampled[0][metric]  # NaN where either is undefined
        metrics[metric] = MetricDifference(va, vb, None if va is None or vb is None else vb - va,
                                           percentile_interval(differences, confidence) if mask.any() else None)
    right_a, right_b = exact
    return ComparisonRow(
        level=level, n_images=int(mask.sum()), threshold_a=thresholds[0], threshold_b=thresholds[1], metrics=metrics,
        only_a=int((right_a & ~right_b).sum()), only_b=int((right_b & ~right_a).sum()),
        both=int((right_a & right_b).sum()), neither=int((~right_a & ~right_b).sum()),
    )


def compare(
    results_a: Any,
    results_b: Any,
    gt: Any,
    *,
    protocol: str = "transfer",
    val_results_a: Any = None,
    val_results_b: Any = None,
    val_gt: Any = None,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    search: str = "exact",
    levels: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    compute_map: bool = True,
) -> ComparisonReport:
    """Compare model B with model A on the same ground truth: per row and metric, A, B, B - A and its paired
    bootstrap interval, plus the images counted exactly by only one of them.

    Args:
        results_a, results_b: COCO results lists of the two models, or the paths of their JSON files.
        gt: RPC/COCO instances dict, or its path: the images both are evaluated on.
        protocol: how each model's threshold is chosen: ``transfer`` (default; from ``val_results_a`` /
            ``val_results_b`` on ``val_gt``), ``fixed`` (``threshold_a``, ``threshold_b``) or ``oracle`` (on the
            evaluated images, per row). The threshold stays fixed in the bootstrap.
        search: ``exact`` or ``grid`` threshold search (transfer, oracle).
        levels: rows among easy, medium, hard, averaged (default as in :func:`rpc_metrics.evaluate`).
        n_boot: resamples of each row's images (>= 1), shared by A and B.
        seed: seed of ``numpy.random.default_rng``; with the same seed, A's resamples are those of
            ``evaluate(results_a, ..., intervals=n_boot, interval_seed=seed)``.
        confidence: coverage of the intervals, in (0, 1).
        compute_map: also compare mAP50 and mmAP (the slowest part: one weighted accumulation per resample).
    """
    check_bootstrap(n_boot, confidence, seed, minimum=1)
    _check(protocol, threshold_a, threshold_b, val_results_a, val_results_b, val_gt)
    check_protocol(protocol, threshold_a, val_results_a, val_gt, search, levels)
    gt_data, gt_name = _load(gt, None)
    a, rows = _model(results_a, gt_data, gt_name, levels, protocol, val_results_a, val_gt, search, compute_map)
    b, _ = _model(results_b, gt_data, gt_name, levels, protocol, val_results_b, val_gt, search, compute_map)
    out = []
    for level, mask in _row_masks(a.prepared, rows).items():
        thresholds = tuple(_row_threshold(m.prepared, mask, protocol, t, m.validation_threshold, search)
                           for m, t in ((a, threshold_a), (b, threshold_b)))
        out.append(_compare_row(level, mask, a, b, thresholds, n_boot, seed, confidence))
    return ComparisonReport(
        rows=out, protocol=protocol, search=None if protocol == "fixed" else search, n_boot=n_boot, seed=seed,
        confidence=confidence, name_a=_name(results_a, "A"), name_b=_name(results_b, "B"),
        validation_thresholds=(a.validation_threshold, b.validation_threshold) if protocol == "transfer" else None,
    )


def _name(obj: Any, default: str) -> str:
    return str(obj) if isinstance(obj, (str, os.PathLike)) else default


__all__ = ["ComparisonReport", "ComparisonRow", "MetricDifference", "compare"]
