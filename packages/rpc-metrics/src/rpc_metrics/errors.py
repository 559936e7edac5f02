"""Where checkout counting errors come from: each object found, named wrong or missed, each detection extra or not.

cAcc only asks whether an image's counts are all right; this module says why they are not, at the same score
threshold and with the same protocols as :func:`rpc_metrics.evaluate`:

- Every detection at or above the threshold is matched greedily, higher scores first, to the ground truth
  object of **its own SKU** it overlaps most (IoU >= ``iou``, each object matched once; COCO's rule, as in
  :func:`rpc_metrics.cocoeval.match`). Those objects are **found**.
- The detections and objects left over are matched again, SKUs ignored: such an object was seen but given
  **the wrong SKU** (a confusion pair).
- Objects still unmatched are **missed**; detections still unmatched are **extra** (false positives,
  duplicates, or boxes too far off to count as any object).

The three kinds of error add up exactly to the count errors: for every image and SKU, the ground truth count
minus the predicted count equals (wrong-SKU objects of that SKU - wrong-SKU detections of it) + missed - extra.
So "right if no missed" (the images whose counts would all be right with every missed object found, and
nothing else changed) and its two siblings tell which kind of error holds cAcc back. Errors can cancel out
(a missed object and an extra detection of the same SKU leave the count right), so undoing one kind alone can
also make a right image wrong. Crowd ground truth
(``iscrowd: 1``) is left out, as the counting metrics leave it out; detections on it count as extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rpc_metrics import cocoeval
from rpc_metrics.evaluate import (
    _prepare_rows,
    _Prepared,
    _rows_with_thresholds,
    check_protocol,
)
from rpc_metrics.report import _pct

KINDS = ("missed", "wrong_sku", "extra")
DEFAULT_SIZE_BINS = (16, 24, 32, 48, 64, 96)


@dataclass(frozen=True)
class ErrorRow:
    """The error breakdown of one row (a level, or ``averaged``) at its score threshold.

    Image columns: ``images_right`` (every SKU counted right: cAcc's numerator), ``images_under`` (some SKU
    under-counted, none over-counted), ``images_over`` (the reverse), ``images_both``. Object columns:
    ``objects`` = ``found`` + ``wrong_sku`` + ``missed``; ``detections`` = ``found`` + ``wrong_sku`` + ``extra``.
    ``right_if[kind]``: images that would be right with every error of that kind undone.
    ``size_bins``: per bin of the objects' shorter box side (pixels, ``[lo, hi)``), their objects, found,
    wrong_sku and missed (``hi`` None: no upper bound). ``confusions``: (true category id, detected category
    id, objects), most frequent first.
    ``categories``: per SKU (category file order), its objects, found, wrong_sku (objects of it named as another
    SKU), missed, and extra detections of it.
    """

    level: str
    n_images: int
    threshold: float
    images_right: int
    images_under: int
    images_over: int
    images_both: int
    objects: int
    detections: int
    found: int
    wrong_sku: int
    missed: int
    extra: int
    right_if: dict[str, int]
    size_bins: list[dict[str, float | None]]
    confusions: list[tuple[int, int, int]]
    categories: list[dict[str, int]]


@dataclass(frozen=True)
class ErrorReport:
    """The rows of :func:`analyse_errors`, with the settings they were computed with."""

    rows: list[ErrorRow]
    protocol: str
    iou: float
    category_ids: list[int]
    category_names: list[str]
    validation_threshold: float | None = None
    top: int = 10

    def row(self, level: str) -> ErrorRow:
        for r in self.rows:
            if r.level == level:
                return r
        raise KeyError(f"no row {level!r}; rows: {[r.level for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "iou": self.iou, "validation_threshold": self.validation_threshold,
                "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        """The breakdown per row, then for the last row: objects by size, the most missed SKUs and the most
        confused SKU pairs."""
        name_of = dict(zip(self.category_ids, self.category_names, strict=True))
        where = {"oracle": "chosen per row on the evaluated images", "fixed": "given",
                 "transfer": "chosen on the validation files"}[self.protocol]
        lines = [f"Errors at the score threshold {where} (protocol {self.protocol}); matched at IoU >= {self.iou:g}.",
                 "", "| level | threshold | images | right | under-counted only | over-counted only | both | objects "
                 "| found | wrong SKU | missed | extra | right if no missed | right if no wrong SKU | right if no extra |",
                 "| --- |" + " ---: |" * 14]
        for r in self.rows:
            n = max(r.n_images, 1)
            lines.append(
                f"| {r.level} | {r.threshold:.4g} | {r.n_images} | {_pct(r.images_right / n)} | "
                f"{_pct(r.images_under / n)} | {_pct(r.images_over / n)} | {_pct(r.images_both / n)} | {r.objects} | "
                f"{r.found} | {r.wrong_sku} | {r.missed} | {r.extra} | {_pct(r.right_if['missed'] / n)} | "
                f"{_pct(r.right_if['wrong_sku'] / n)} | {_pct(r.right_if['extra'] / n)} |")
        last = self.rows[-1] if self.rows else None
        if last is not None and last.objects:
            lines += ["", f"Objects by their shorter box side ({last.level}):", "",
                      "| shorter side (px) | objects | found | wrong SKU | missed | missed share |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for b in last.size_bins:
                if b["objects"]:
                    hi = "" if b["hi"] is None else f"{b['hi']:g}"
                    lines.append(f"| {b['lo']:g}-{hi} | {b['objects']} | {b['found']} | {b['wrong_sku']} | "
                                 f"{b['missed']} | {_pct(b['missed'] / b['objects'])} |")
        missed = sorted((c for c in (last.categories if last is not None else []) if c["missed"]),
                        key=lambda c: (-c["missed"], c["category_id"]))
        if missed:
            lines += ["", f"Most missed SKUs ({last.level}; {last.missed} objects in all):", "",
                      "| SKU | objects | missed | missed share | wrong SKU | extra detections |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for c in missed[: self.top]:
                lines.append(f"| {name_of.get(c['category_id'], c['category_id'])} | {c['objects']} | {c['missed']} | "
                             f"{_pct(c['missed'] / c['objects'])} | {c['wrong_sku']} | {c['extra']} |")
        if last is not None and last.confusions:
            lines += ["", f"Most frequent wrong SKUs ({last.level}; {last.wrong_sku} objects in all):", "",
                      "| SKU | detected as | objects |", "| --- | --- | ---: |"]
            for true_id, det_id, n in last.confusions[: self.top]:
                lines.append(f"| {name_of.get(true_id, true_id)} | {name_of.get(det_id, det_id)} | {n} |")
        return "\n".join(lines)


def _matches(gt: cocoeval.BoxSet, dt: cocoeval.BoxSet, n_categories: int, iou: float) -> np.ndarray:
    """For each detection of ``dt`` (in its order), the ground truth of ``gt`` it matches greedily, or -1."""
    out = np.full(len(dt.image_index), -1, dtype=np.int64)
    if len(out) == 0 or len(gt.image_index) == 0:
        return out
    m = cocoeval.match(gt, dt, n_categories, max_dets=len(out) + 1, iou_thresholds=np.array([iou]))
    out[m.det_index] = m.det_gt[0]
    return out


def _subset(s: cocoeval.BoxSet, keep: np.ndarray, *, one_category: bool = False) -> cocoeval.BoxSet:
    """Rows ``keep`` of a box set; ``one_category`` puts every box in category 0 (matching across SKUs)."""
    category = s.category_index[keep]
    return cocoeval.BoxSet(
        image_index=s.image_index[keep], category_index=np.zeros_like(category) if one_category else category,
        boxes=s.boxes[keep], scores=None if s.scores is None else s.scores[keep],
        iscrowd=None if s.iscrowd is None else s.iscrowd[keep],
        area=None if s.area is None else s.area[keep], ids=None if s.ids is None else s.ids[keep])


@dataclass(frozen=True)
class _Outcomes:
    """Every image's matching at one threshold: the regular objects and the detections counted, each object
    found / named wrong / missed, each detection extra or not, and the wrong-SKU (object, detection) pairs."""

    gt: cocoeval.BoxSet
    dt: cocoeval.BoxSet
    found: np.ndarray
    wrong: np.ndarray
    missed: np.ndarray
    extra: np.ndarray
    wrong_gt: np.ndarray
    wrong_dt: np.ndarray


def _outcomes(p: _Prepared, threshold: float, iou: float) -> _Outcomes:
    """Match every image at ``threshold`` (an image's matching does not depend on the other images, so the rows
    that share a threshold share this)."""
    n_cat = len(p.category_ids)
    gt = _subset(p.gt, np.flatnonzero(p.gt.iscrowd == 0))
    dt = _subset(p.dt, np.flatnonzero(p.dt.scores >= threshold))
    # Pass 1: each SKU on its own. Pass 2: what is left, SKUs ignored.
    first = _matches(gt, dt, n_cat, iou)
    found = np.zeros(len(gt.image_index), dtype=bool)
    found[first[first >= 0]] = True
    gt_left, dt_left = np.flatnonzero(~found), np.flatnonzero(first < 0)
    second = _matches(_subset(gt, gt_left, one_category=True), _subset(dt, dt_left, one_category=True), 1, iou)
    paired = second >= 0
    wrong_gt, wrong_dt = gt_left[second[paired]], dt_left[paired]
    wrong = np.zeros(len(gt.image_index), dtype=bool)
    wrong[wrong_gt] = True
    extra = np.ones(len(dt.image_index), dtype=bool)
    extra[first >= 0] = False
    extra[wrong_dt] = False
    return _Outcomes(gt=gt, dt=dt, found=found, wrong=wrong, missed=~found & ~wrong, extra=extra,
                     wrong_gt=wrong_gt, wrong_dt=wrong_dt)


def _row_errors(p: _Prepared, o: _Outcomes, level: str, mask: np.ndarray, threshold: float,
                size_bins: Sequence[float]) -> ErrorRow:
    n_img, n_cat = int(mask.sum()), len(p.category_ids)
    local = np.cumsum(mask) - 1
    in_gt, in_dt = mask[o.gt.image_index], mask[o.dt.image_index]
    gt = _subset(o.gt, in_gt)
    dt = _subset(o.dt, in_dt)
    gt_found, gt_wrong, missed, extra = o.found[in_gt], o.wrong[in_gt], o.missed[in_gt], o.extra[in_dt]
    pair_in = in_gt[o.wrong_gt]
    # Positions of the row's wrong pairs within the row's objects and detections.
    wrong_gt = (np.cumsum(in_gt) - 1)[o.wrong_gt[pair_in]]
    wrong_dt = (np.cumsum(in_dt) - 1)[o.wrong_dt[pair_in]]

    # Counts only where an (image, SKU) pair has an object or a detection: sparse, O(objects + detections).
    keys = np.r_[local[gt.image_index] * n_cat + gt.category_index, local[dt.image_index] * n_cat + dt.category_index]
    pairs_used, position = np.unique(keys.astype(np.int64), return_inverse=True)
    at_gt, at_dt = position[: len(gt.image_index)], position[len(gt.image_index):]

    def counts(where: np.ndarray) -> np.ndarray:
        return np.bincount(where, minlength=len(pairs_used))

    truth, pred = counts(at_gt), counts(at_dt)
    fixes = {"missed": counts(at_gt[missed]),
             "wrong_sku": counts(at_gt[wrong_gt]) - counts(at_dt[wrong_dt]),
             "extra": -counts(at_dt[extra])}
    image_of_pair = pairs_used // n_cat

    def images_with(flags: np.ndarray) -> np.ndarray:
        out = np.zeros(n_img, dtype=bool)
        out[image_of_pair[flags]] = True
        return out

    diff = pred - truth
    under, over = images_with(diff < 0), images_with(diff > 0)
    right_if = {kind: n_img - int(images_with(pred + fixes[kind] != truth).sum()) for kind in KINDS}

    side = np.minimum(gt.boxes[:, 2], gt.boxes[:, 3])
    edges = np.r_[0.0, np.asarray(size_bins, dtype=np.float64), np.inf]
    which = np.clip(np.searchsorted(edges, side, side="right") - 1, 0, len(edges) - 2)
    nb = len(edges) - 1
    tally = {name: np.bincount(which[sel], minlength=nb)
             for name, sel in (("objects", np.ones(len(side), bool)), ("found", gt_found), ("wrong_sku", gt_wrong),
                               ("missed", missed))}
    bins = [{"lo": float(edges[b]), "hi": float(edges[b + 1]) if b + 1 < nb else None,
             **{k: int(v[b]) for k, v in tally.items()}} for b in range(nb)]

    cat_ids = np.asarray(p.category_ids, dtype=np.int64)
    key = gt.category_index[wrong_gt].astype(np.int64) * n_cat + dt.category_index[wrong_dt]
    pairs, n_pairs = np.unique(key, return_counts=True)
    order = np.lexsort((pairs, -n_pairs))
    confusions = [(int(cat_ids[k // n_cat]), int(cat_ids[k % n_cat]), int(c))
                  for k, c in zip(pairs[order], n_pairs[order], strict=True)]
    per_sku = {name: np.bincount(category, minlength=n_cat)
               for name, category in (("objects", gt.category_index), ("found", gt.category_index[gt_found]),
                                      ("wrong_sku", gt.category_index[gt_wrong]), ("missed", gt.category_index[missed]),
                                      ("extra", dt.category_index[extra]))}
    categories = [{"category_id": int(cat_ids[k]), **{name: int(v[k]) for name, v in per_sku.items()}}
                  for k in range(n_cat)]
    return ErrorRow(
        level=level, n_images=n_img, threshold=float(threshold), images_right=int((~under & ~over).sum()),
        images_under=int((under & ~over).sum()), images_over=int((over & ~under).sum()),
        images_both=int((under & over).sum()), objects=int(in_gt.sum()), detections=int(in_dt.sum()),
        found=int(gt_found.sum()), wrong_sku=int(gt_wrong.sum()), missed=int(missed.sum()), extra=int(extra.sum()),
        right_if=right_if, size_bins=bins, confusions=confusions, categories=categories)


def analyse_errors(
    results: Any,
    gt: Any,
    *,
    protocol: str = "oracle",
    threshold: float | None = None,
    val_results: Any = None,
    val_gt: Any = None,
    search: str = "exact",
    iou: float = 0.5,
    size_bins: Sequence[float] = DEFAULT_SIZE_BINS,
    levels: Sequence[str] | None = None,
    top: int = 10,
) -> ErrorReport:
    """Break each row's count errors down into missed objects, wrong SKUs and extra detections.

    The arguments are :func:`rpc_metrics.evaluate`'s (the same files, protocols and rows), plus ``iou`` (the
    overlap that makes a detection cover an object), ``size_bins`` (increasing edges, in pixels, of the
    objects' shorter box side) and ``top`` (confused SKU pairs printed by :meth:`ErrorReport.to_markdown`).
    """
    check_protocol(protocol, threshold, val_results, val_gt, search, levels)
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou should be in (0, 1], got {iou}")
    edges = np.asarray(size_bins, dtype=np.float64)
    if edges.ndim != 1 or (edges <= 0).any() or (np.diff(edges) <= 0).any():
        raise ValueError(f"size_bins should be increasing positive pixel sizes, got {list(size_bins)}")
    p, _, _, levels, validation_threshold = _prepare_rows(results, gt, levels, protocol, val_results, val_gt, search)
    rows, matched = [], {}
    for level, mask, row_threshold in _rows_with_thresholds(p, levels, protocol, threshold, validation_threshold,
                                                            search):
        if row_threshold not in matched:
            matched[row_threshold] = _outcomes(p, row_threshold, iou)
        rows.append(_row_errors(p, matched[row_threshold], level, mask, row_threshold, edges))
    return ErrorReport(rows=rows, protocol=protocol, iou=iou, category_ids=p.category_ids,
                       category_names=p.category_names, validation_threshold=validation_threshold, top=top)


__all__ = ["DEFAULT_SIZE_BINS", "KINDS", "ErrorReport", "ErrorRow", "analyse_errors"]
