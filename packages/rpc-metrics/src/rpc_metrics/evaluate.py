"""Per-level RPC evaluation: counting metrics at a threshold chosen by a named protocol, plus COCO mAP.

Protocols (every report says which one and the threshold of each row):

- ``oracle``: per row, the threshold maximizing cAcc on the evaluated images themselves (what published RPC
  numbers use); ``search="exact"`` finds the true optimum, ``search="grid"`` reproduces the published tool.
- ``fixed``: one given threshold for every row.
- ``transfer``: the oracle threshold of a validation pair (its averaged row: the level of a checkout image
  is not known at test time) applied to every row of the test files. The honest protocol.

``compat="rpctool"`` (oracle, grid search) reproduces the published tool exactly, quirk included (:func:`evaluate`).

With ``intervals=B``, each row also gets percentile bootstrap intervals over its images
(:mod:`rpc_metrics.bootstrap`), at the row's threshold chosen once on the full data.
"""

from __future__ import annotations

import contextlib
import copy
import io as _stdio
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rpc_metrics import cocoeval
from rpc_metrics.bootstrap import check_bootstrap, row_intervals
from rpc_metrics.counting import CountingMetrics, _compute, _update, count_matrix
from rpc_metrics.io import LEVELS, FormatError, _load, check_ids_in, results_to_arrays, validate_instances
from rpc_metrics.report import EvaluationReport, RowResult
from rpc_metrics.threshold import (
    CorrectIntervals,
    ThresholdChoice,
    correct_intervals,
    exact_search,
    grid_search,
)

ROWS = (*LEVELS, "averaged")
PROTOCOLS = ("oracle", "fixed", "transfer")
SEARCHES = ("exact", "grid")
COMPATS = ("rpctool",)


@dataclass
class _Prepared:
    """Ground truth and detections as arrays over sorted image ids and the gt file's category order."""

    image_ids: np.ndarray
    image_levels: np.ndarray
    category_ids: list[int]
    category_names: list[str]
    gt: cocoeval.BoxSet
    dt: cocoeval.BoxSet
    gt_counts: np.ndarray


def _prepare(results: Any, gt: Any, *, require_levels: bool, gt_source: str | None = None
             ) -> tuple[_Prepared, dict, list]:
    """Validate and convert a results/ground-truth pair (``gt_source``: the name errors give an in-memory gt)."""
    gt_data, gt_name = _load(gt, gt_source)
    ann = validate_instances(gt_data, source=gt_name, require_levels=require_levels)
    if not gt_data["images"]:
        raise FormatError(gt_name, "images", "no images, nothing to evaluate; pass the ground truth of the "
                          "evaluated images (instances JSON)")
    res_data, res_name = _load(results, None)
    det = results_to_arrays(res_data, source=res_name)
    image_ids = np.array(sorted(im["id"] for im in gt_data["images"]), dtype=np.int64)
    check_ids_in(det.image_ids, set(image_ids.tolist()), "image_id", res_name, f"ground truth {gt_name}")
    # Categories in ascending id order, as pycocotools orders them.
    name_of = {c["id"]: str(c.get("name", c["id"])) for c in gt_data["categories"]}
    cat_ids = sorted(name_of)
    check_ids_in(det.category_ids, set(cat_ids), "category_id", res_name, f"ground truth {gt_name}")
    sorted_cats = np.asarray(cat_ids, dtype=np.int64)

    def category_index(ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(sorted_cats, ids)

    level_of = {im["id"]: im.get("level", "") for im in gt_data["images"]}
    gt_set = cocoeval.BoxSet(
        image_index=np.searchsorted(image_ids, ann.image_ids), category_index=category_index(ann.category_ids),
        boxes=ann.boxes, iscrowd=ann.iscrowd, area=ann.area, ids=ann.ids,
    )
    dt_set = cocoeval.BoxSet(
        image_index=np.searchsorted(image_ids, det.image_ids), category_index=category_index(det.category_ids),
        boxes=det.boxes, scores=det.scores,
    )
    regular = gt_set.iscrowd == 0
    gt_counts = count_matrix(gt_set.image_index[regular], gt_set.category_index[regular], len(image_ids), len(cat_ids))
    prepared = _Prepared(
        image_ids=image_ids, image_levels=np.array([level_of[i] for i in image_ids.tolist()]),
        category_ids=cat_ids, category_names=[name_of[c] for c in cat_ids],
        gt=gt_set, dt=dt_set, gt_counts=gt_counts,
    )
    return prepared, gt_data, res_data


def _row_masks(p: _Prepared, levels: Sequence[str]) -> dict[str, np.ndarray]:
    masks = {}
    for level in levels:
        if level == "averaged":
            masks[level] = np.ones(len(p.image_ids), dtype=bool)
        else:
            masks[level] = p.image_levels == level
    return masks


def _row_intervals(p: _Prepared, mask: np.ndarray) -> CorrectIntervals:
    local = np.cumsum(mask) - 1
    in_row = mask[p.dt.image_index]
    return correct_intervals(local[p.dt.image_index[in_row]], p.dt.category_index[in_row],
                             p.dt.scores[in_row], p.gt_counts[mask])


def _choose(intervals: CorrectIntervals, search: str, compat: str | None = None) -> ThresholdChoice:
    return exact_search(intervals) if search == "exact" else grid_search(intervals, detected_only=compat == "rpctool")


def check_protocol(protocol: str, threshold: float | None, val_results: Any, val_gt: Any, search: str,
                   levels: Sequence[str] | None) -> None:
    """Raise ValueError for a threshold protocol missing what it needs, an unknown search or level."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol should be one of {PROTOCOLS}, got {protocol!r}")
    if search not in SEARCHES:
        raise ValueError(f"search should be one of {SEARCHES}, got {search!r}")
    if protocol == "fixed" and threshold is None:
        raise ValueError("protocol 'fixed' needs a threshold")
    if threshold is not None and not _finite(threshold):
        raise ValueError(f"threshold should be a finite number, got {threshold!r}")
    if protocol == "transfer" and (val_results is None or val_gt is None):
        raise ValueError("protocol 'transfer' needs val_results and val_gt (the validation pair)")
    if levels is not None:
        unknown = [lv for lv in levels if lv not in ROWS]
        if unknown:
            raise ValueError(f"unknown level {unknown[0]!r}; choose among {ROWS}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def _levels_required(levels: Sequence[str] | None) -> bool:
    return levels is not None and any(lv != "averaged" for lv in levels)


def _prepare_rows(results: Any, gt: Any, levels: Sequence[str] | None, protocol: str, val_results: Any,
                  val_gt: Any, search: str, *, gt_source: str | None = None
                  ) -> tuple[_Prepared, dict, list, Sequence[str], float | None]:
    """:func:`_prepare` the files, then the rows to report (default: every level when each image has one, else
    averaged) and the transfer protocol's threshold, chosen on the validation pair's averaged row (None for the
    other protocols). Returns ``(prepared, gt_data, results_data, levels, validation_threshold)``."""
    p, gt_data, res_data = _prepare(results, gt, require_levels=_levels_required(levels), gt_source=gt_source)
    if levels is None:
        levels = ROWS if len(p.image_ids) and all(p.image_levels != "") else ("averaged",)
    validation_threshold = None
    if protocol == "transfer":
        vp, _, _ = _prepare(val_results, val_gt, require_levels=False)
        validation_threshold = _choose(_row_intervals(vp, np.ones(len(vp.image_ids), bool)), search).threshold
    return p, gt_data, res_data, levels, validation_threshold


def _row_threshold(p: _Prepared, mask: np.ndarray, protocol: str, threshold: float | None,
                   validation_threshold: float | None, search: str, compat: str | None = None) -> float:
    if protocol == "oracle":
        return _choose(_row_intervals(p, mask), search, compat).threshold
    return float(threshold if protocol == "fixed" else validation_threshold)


def _rows_with_thresholds(p: _Prepared, levels: Sequence[str], protocol: str, threshold: float | None,
                          validation_threshold: float | None, search: str, compat: str | None = None
                          ) -> Iterator[tuple[str, np.ndarray, float]]:
    """Each row's ``(level, image mask, threshold)`` under the protocol."""
    for level, mask in _row_masks(p, levels).items():
        yield level, mask, _row_threshold(p, mask, protocol, threshold, validation_threshold, search, compat)


def _row_count_matrices(p: _Prepared, mask: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (detections with ``score >= threshold``) and true count matrices ``int64[N row images, K]``."""
    local = np.cumsum(mask) - 1
    counted = mask[p.dt.image_index] & (p.dt.scores >= threshold)
    gt = p.gt_counts[mask]
    pred = count_matrix(local[p.dt.image_index[counted]], p.dt.category_index[counted], gt.shape[0], gt.shape[1])
    return pred, gt


def _row_counting(p: _Prepared, mask: np.ndarray, threshold: float) -> tuple[CountingMetrics, dict[str, list]]:
    state = _update(*_row_count_matrices(p, mask, threshold))
    with np.errstate(divide="ignore", invalid="ignore"):
        ccd = np.where(state.gt_total > 0, state.abs_diff / np.maximum(state.gt_total, 1), np.nan)
        ciou = np.where(state.max_total > 0, state.min_total / np.maximum(state.max_total, 1), np.nan)
    columns = {"gt_count": state.gt_total.tolist(), "pred_count": state.pred_total.tolist(),
               "abs_diff": state.abs_diff.tolist(), "ccd": _nan_to_none(ccd), "ciou": _nan_to_none(ciou)}
    return _compute(state), columns


def _nan_to_none(values: np.ndarray) -> list:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def _pycocotools_precision(gt_data: Mapping, results: list, image_ids: np.ndarray) -> np.ndarray:
    """The reference: pycocotools' COCOeval on the row's images (quiet, no temporary files)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_copy = copy.deepcopy(dict(gt_data))
    for ann in gt_copy["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    with contextlib.redirect_stdout(_stdio.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_copy
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt_copy["images"], "categories": gt_copy["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = image_ids.tolist()
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"][:, :, :, 0, -1]


def evaluate(
    results: Any,
    gt: Any,
    *,
    protocol: str = "oracle",
    threshold: float | None = None,
    val_results: Any = None,
    val_gt: Any = None,
    search: str = "exact",
    compute_map: bool = True,
    levels: Sequence[str] | None = None,
    map_backend: str = "fast",
    method: str = "default",
    intervals: int = 0,
    interval_seed: int = 0,
    confidence: float = 0.95,
    compat: str | None = None,
) -> EvaluationReport:
    """Evaluate detections against RPC ground truth, one row per level plus the averaged row.

    Args:
        results: COCO results list, or the path of its JSON file.
        gt: RPC/COCO instances dict, or the path of its JSON file.
        protocol: ``oracle``, ``fixed`` (needs ``threshold``) or ``transfer`` (needs ``val_results``, ``val_gt``).
        search: ``exact`` (true optimum) or ``grid`` (the published tool's procedure) for oracle/transfer.
        compute_map: compute mAP50 and mmAP (COCO bbox, maxDets 100).
        levels: rows among easy, medium, hard, averaged; default all four when every image has a ``level``,
            else only averaged.
        map_backend: ``fast`` (vectorized, equal to pycocotools) or ``pycocotools`` (the reference).
        method: the method name printed in the table.
        intervals: bootstrap resamples per row (0: no intervals). Each row resamples its own images with
            replacement and gets ``RowResult.intervals``, percentile intervals of every metric at the row's
            threshold: the threshold is chosen once on the full data, so the interval measures the sampling
            noise of the test images, not the choice of threshold. mAP intervals always use the fast
            (weighted) accumulation.
        interval_seed: seed of ``numpy.random.default_rng``; the same seed gives the same intervals.
        confidence: the intervals' coverage, in (0, 1).
        compat: None (every image of a row counts), or ``"rpctool"`` (with protocol ``oracle`` and search ``grid``,
            no intervals): rpctool 0.1.6 exactly. Its per-image count table only holds the images with at least
            one detection scoring ``>= t``, so at each grid threshold cAcc, and at the chosen one cAcc, ACD,
            mCCD, mCIoU (and ``n_images``), are over those images only; mAP stays over every image of the row.
    """
    if map_backend not in ("fast", "pycocotools"):
        raise ValueError(f"map_backend should be 'fast' or 'pycocotools', got {map_backend!r}")
    check_protocol(protocol, threshold, val_results, val_gt, search, levels)
    check_bootstrap(intervals, confidence, interval_seed, name="intervals")
    check_compat(compat, protocol, search, intervals)
    p, gt_data, res_data, levels, validation_threshold = _prepare_rows(results, gt, levels, protocol, val_results,
                                                                       val_gt, search)

    matching = None
    if compute_map and (map_backend == "fast" or intervals):
        matching = cocoeval.match(p.gt, p.dt, len(p.category_ids))
    rows = []
    for level, mask, row_threshold in _rows_with_thresholds(p, levels, protocol, threshold, validation_threshold,
                                                            search, compat):
        counted = mask & _detected(p, row_threshold) if compat == "rpctool" else mask
        metrics, columns = _row_counting(p, counted, row_threshold)
        mmap = map50 = None
        if compute_map:
            mmap, map50 = _row_map(p, gt_data, res_data, mask, matching, map_backend, columns)
        rows.append(RowResult(
            level=level, n_images=int(counted.sum()), threshold=row_threshold, cacc=metrics.cacc, mciou=metrics.mciou,
            acd=metrics.acd, mccd=metrics.mccd, map50=map50, mmap=mmap, undefined_mciou=metrics.undefined_mciou,
            undefined_mccd=metrics.undefined_mccd, per_category=columns,
            intervals=_intervals(p, mask, row_threshold, matching, intervals, interval_seed, confidence)
            if intervals else None,
        ))
    return EvaluationReport(rows=rows, protocol=protocol, search=None if protocol == "fixed" else search,
                            method=method, category_ids=p.category_ids, category_names=p.category_names,
                            validation_threshold=validation_threshold,
                            bootstrap={"n_boot": intervals, "seed": interval_seed, "confidence": confidence}
                            if intervals else None, compat=compat)


def _row_map(p: _Prepared, gt_data: Mapping, res_data: list, mask: np.ndarray, matching: cocoeval.Matching | None,
             map_backend: str, columns: dict[str, list]) -> tuple[float | None, float | None]:
    """``(mmAP, mAP50)`` of a row's images; adds the per-category ``ap50`` and ``ap`` to ``columns``."""
    if map_backend == "fast":
        precision = cocoeval.precision_table(matching, mask, len(p.category_ids))
    else:
        precision = _pycocotools_precision(gt_data, res_data, p.image_ids[mask])
    ap, ap50 = cocoeval.per_category_ap(precision)
    columns["ap50"], columns["ap"] = _nan_to_none(ap50), _nan_to_none(ap)
    return cocoeval.summarize(precision)


def check_compat(compat: str | None, protocol: str, search: str, intervals: int) -> None:
    """Raise ValueError for an unknown compatibility mode or one asked for with options it cannot reproduce."""
    if compat is None:
        return
    if compat not in COMPATS:
        raise ValueError(f"compat should be None or one of {COMPATS}, got {compat!r}")
    if protocol != "oracle" or search != "grid":
        raise ValueError("compat 'rpctool' reproduces rpctool's threshold choice: it needs protocol 'oracle' and "
                         f"search 'grid', got {protocol!r} and {search!r}")
    if intervals:
        raise ValueError("compat 'rpctool' gives rpctool's point estimates only: no bootstrap intervals")


def _detected(p: _Prepared, threshold: float) -> np.ndarray:
    """Images with at least one detection scoring ``>= threshold`` (the only ones rpctool counts), bool[N]."""
    kept = np.zeros(len(p.image_ids), dtype=bool)
    kept[p.dt.image_index[p.dt.scores >= threshold]] = True
    return kept


def _intervals(p: _Prepared, mask: np.ndarray, threshold: float, matching: cocoeval.Matching | None, n_boot: int,
               seed: int, confidence: float) -> dict[str, list[float] | None]:
    """Bootstrap intervals of one row at its threshold (mAP ones when ``matching`` is given)."""
    layout = None if matching is None else cocoeval.category_layout(matching, len(p.category_ids), mask)
    pred, gt = _row_count_matrices(p, mask, threshold)
    return row_intervals(pred, gt, n_boot=n_boot, seed=seed, confidence=confidence, layout=layout)


__all__ = ["COMPATS", "ROWS", "EvaluationReport", "FormatError", "RowResult", "evaluate"]
