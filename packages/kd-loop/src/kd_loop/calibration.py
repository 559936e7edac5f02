"""Selection thresholds and the counting view's scale, calibrated on a labelled split, never on the pool.

A detector's scores drift from round to round (a student trained on its teacher's confident labels grows more
confident), so a fixed threshold keeps ever more wrong pseudo-labels, and a short CPU training leaves scores
far below their precision (0.6 may already mean 96% right). With ``selection.target_precision`` set, each
round's threshold is the lowest score at which the teacher's detections on the **validation** split (a small
labelled split that a store can afford, the same one the transfer protocol takes its counting threshold from)
are right at least that often: IoU >= 0.5 with a true box of the same category, matched greedily by score as
COCO does.

Under a domain gap the counting view may count too many or too few products everywhere (on one shifted world
its totals averaged 20.0 against 12.3 true products), so no image's detections agree with its rounded counts.
With ``selection.count_scale = "auto"`` the counts are multiplied, before rounding, by one global scale fitted
on the labelled split (:func:`fit_count_scale`). The calibration split is the val split unless
``calibration.instances`` names another labelled one (held-out synthesized images, for a store without
labelled checkout images). The pool's labels play no part; :mod:`kd_loop.report` alone reads those, after the
fact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from rpc_metrics.cocoeval import BoxSet, match
from rpc_metrics.counts import half_up, true_totals, view_totals


def box_set(dataset: Mapping, image_ids: np.ndarray, cat_ids: np.ndarray, *, detections: bool) -> BoxSet:
    """The boxes of an instances dict (``detections``: its non-crowd annotations or results, with scores) as
    :class:`rpc_metrics.cocoeval.BoxSet` columns over the sorted ``image_ids`` and ``cat_ids``."""
    anns = [a for a in dataset["annotations"] if not a.get("iscrowd", 0)] if detections else dataset["annotations"]
    n = len(anns)
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
    image_index = np.searchsorted(image_ids, np.fromiter((a["image_id"] for a in anns), np.int64, n))
    category_index = np.searchsorted(cat_ids, np.fromiter((a["category_id"] for a in anns), np.int64, n))
    if detections:
        scores = np.fromiter((a.get("score", 1.0) for a in anns), np.float64, n)
        return BoxSet(image_index, category_index, boxes, scores=scores)
    return BoxSet(image_index, category_index, boxes,
                  iscrowd=np.fromiter((a.get("iscrowd", 0) for a in anns), np.int64, n),
                  area=boxes[:, 2] * boxes[:, 3], ids=np.arange(1, n + 1))


def precision_threshold(results: list[Mapping], gt: Mapping, target: float) -> dict:
    """The lowest score threshold whose kept detections are right at least ``target`` of the time.

    ``results`` are COCO results on the images of ``gt`` (an instances dict with labels). A detection is right
    when it matches (COCO's greedy matching by score, IoU >= 0.5) a non-crowd true box of its category.
    Returns ``{"threshold", "precision", "recall", "kept"}`` at that threshold; when no threshold reaches the
    target, ``threshold`` is just above the highest score (nothing is kept) and the others are None.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision should be in (0, 1], got {target}")
    image_ids = np.array(sorted(im["id"] for im in gt["images"]), dtype=np.int64)
    cat_ids = np.array(sorted(c["id"] for c in gt["categories"]), dtype=np.int64)
    known = set(image_ids.tolist())
    results = [r for r in results if r["image_id"] in known]
    truth = box_set(gt, image_ids, cat_ids, detections=False)
    n_true = int((truth.iscrowd == 0).sum())
    dets = box_set({"annotations": results}, image_ids, cat_ids, detections=True)
    if len(dets.scores) == 0:
        return {"threshold": 1.0, "precision": None, "recall": None, "kept": 0}
    matched = match(truth, dets, len(cat_ids), max_dets=10**9)
    order = np.argsort(-matched.det_score, kind="stable")
    scores, right = matched.det_score[order], matched.tp[0][order] & ~matched.ignored[0][order]
    kept = np.arange(1, len(scores) + 1)
    precision = np.cumsum(right) / kept
    # A threshold keeps every detection of a tied score or none of them: only the last of each tie counts.
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    ok = np.flatnonzero(last_of_tie & (precision >= target))
    if len(ok) == 0:
        return {"threshold": float(np.nextafter(scores[0], np.inf)), "precision": None, "recall": None, "kept": 0}
    i = int(ok[-1])
    return {"threshold": float(scores[i]), "precision": float(precision[i]),
            "recall": float(right[: i + 1].sum() / max(n_true, 1)), "kept": int(kept[i])}


# A scale outside this range says the counter is broken rather than biased; it is clipped, and the clip recorded.
SCALE_RANGE = (0.25, 4.0)


def fit_count_scale(truth: np.ndarray, view: np.ndarray, clip: tuple[float, float] = SCALE_RANGE) -> dict:
    """The ratio estimator ``s = sum_i t_i / sum_i v_i`` over the calibration images, clipped to ``clip``: ``t_i``
    the true objects of image ``i`` and ``v_i`` the counting view's unrounded total
    (:func:`rpc_metrics.counts.true_totals`, :func:`rpc_metrics.counts.view_totals`).

    One global scale for every class: ``s * c_ik`` is the calibrated count of class ``k`` in image ``i``.
    Returns ``{"scale", "unclipped", "clipped", "true_objects", "counted"}``; when the view counted nothing
    (``sum_i v_i <= 0``) or the split has no object, nothing can be fitted: ``scale`` is 1, ``unclipped`` None.
    """
    true_objects, counted = float(truth.sum()), float(view.sum())
    out = {"true_objects": true_objects, "counted": counted}
    if counted <= 0 or true_objects <= 0:
        return {"scale": 1.0, "unclipped": None, "clipped": False, **out}
    unclipped = true_objects / counted
    scale = min(max(unclipped, clip[0]), clip[1])
    return {"scale": scale, "unclipped": unclipped, "clipped": scale != unclipped, **out}


def count_error(truth: np.ndarray, view: np.ndarray, scale: float) -> float | None:
    """Mean absolute error of the rounded scaled totals, ``(1/N) sum_i |floor(s v_i + 1/2) - t_i|`` (None when
    N = 0): the error the agreement check sees, on the calibration split."""
    if len(truth) == 0:
        return None
    return float(np.mean(np.abs(half_up(scale * view) - truth)))


def count_scale(setting: str | float, counts: Mapping | None = None, gt: Mapping | None = None) -> dict:
    """The count scale of a round and how it was obtained, for ``selection.json``.

    ``setting``: ``"auto"`` (fitted by :func:`fit_count_scale` on ``gt``, a labelled split, from ``counts``, the
    teacher's counting view on it; 1 without them), ``"none"`` (1) or a positive number (that scale). With
    ``counts`` and ``gt``, the teacher's mean count error on the split before and after scaling is recorded too
    (:func:`count_error`).
    """
    positive = isinstance(setting, (int, float)) and not isinstance(setting, bool) and math.isfinite(setting) \
        and setting > 0
    if setting not in ("auto", "none") and not positive:
        raise ValueError(f"count scale should be 'auto', 'none' or a positive number, got {setting!r}")
    fixed = None if setting == "auto" else 1.0 if setting == "none" else float(setting)
    record = {"setting": setting if isinstance(setting, str) else float(setting)}
    if counts is None or gt is None:
        if fixed is None:
            return {**record, "scale": 1.0, "method": "not fitted: no labelled calibration split or no counts on it"}
        return {**record, "scale": fixed, "method": "off" if fixed == 1.0 else "fixed"}
    image_ids = np.array(sorted(im["id"] for im in gt["images"]), dtype=np.int64)
    truth, view = true_totals(gt, image_ids), view_totals(counts, image_ids)
    if fixed is None:
        fit = fit_count_scale(truth, view)
        record.update(fit)
        scale = fit["scale"]
        method = ("not fitted: the split has no object or the counting view counted none" if fit["unclipped"] is None
                  else f"fitted, clipped to {list(SCALE_RANGE)}" if fit["clipped"] else "fitted")
    else:
        scale, method = fixed, "off" if fixed == 1.0 else "fixed"
    return {**record, "scale": scale, "method": method, "images": len(image_ids),
            "count_error_before": count_error(truth, view, 1.0), "count_error_after": count_error(truth, view, scale)}
