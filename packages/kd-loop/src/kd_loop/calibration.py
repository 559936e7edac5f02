"""Selection thresholds calibrated on the labelled validation split, never on the pool.

A detector's scores drift from round to round (a student trained on its teacher's confident labels grows more
confident), so a fixed threshold keeps ever more wrong pseudo-labels, and a short CPU training leaves scores
far below their precision (0.6 may already mean 96% right). With ``selection.target_precision`` set, each
round's threshold is the lowest score at which the teacher's detections on the **validation** split (a small
labelled split that a store can afford, the same one the transfer protocol takes its counting threshold from)
are right at least that often: IoU >= 0.5 with a true box of the same category, matched greedily by score as
COCO does. The pool's labels play no part; :mod:`kd_loop.report` alone reads those, after the fact.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rpc_metrics.cocoeval import BoxSet, match


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
