"""Reporting only: how good the selection and the models are, measured against ground truth when given.

This is the one module of kd-loop that reads the pool's ground truth, and nothing it computes flows back into
the selection: the loop calls it after a round's selection and training are written. (The selection may use
the labelled validation split, through :mod:`kd_loop.calibration`; never the pool's labels.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rpc_metrics import evaluate
from rpc_metrics.cocoeval import BoxSet, match

from .calibration import box_set as _box_set


def selection_quality(pseudo: Mapping, pool_gt: Mapping) -> dict:
    """Image precision (selected images whose pseudo-label counts equal the truth) and box precision
    (pseudo-label boxes matching a true box of the same category at IoU >= 0.5, greedily by score)."""
    selected = np.array(sorted(im["id"] for im in pseudo["images"]), dtype=np.int64)
    if len(selected) == 0:
        return {"image_precision": None, "box_precision": None}
    cat_ids = np.array(sorted(c["id"] for c in pool_gt["categories"]), dtype=np.int64)
    chosen = set(selected.tolist())
    gt_in = {**pool_gt, "annotations": [a for a in pool_gt["annotations"]
                                        if a["image_id"] in chosen and not a.get("iscrowd", 0)]}
    truth = _box_set(gt_in, selected, cat_ids, detections=False)
    labels = _box_set(pseudo, selected, cat_ids, detections=True)
    k = len(cat_ids)

    def counts(s: BoxSet) -> np.ndarray:
        return np.bincount(s.image_index * k + s.category_index, minlength=len(selected) * k).reshape(-1, k)

    image_precision = float(np.mean((counts(truth) == counts(labels)).all(axis=1)))
    if len(labels.scores) == 0:
        return {"image_precision": image_precision, "box_precision": None}
    matched = match(truth, labels, k, max_dets=10**6)
    box_precision = float(matched.tp[0].mean())  # IoU threshold 0.5
    return {"image_precision": image_precision, "box_precision": box_precision}


def model_metrics(results, pool_gt, *, val_results=None, val_gt=None, search: str = "exact") -> dict:
    """cAcc, mCIoU, ACD, mCCD (averaged row) with the transfer protocol (if a val split is given) and oracle."""
    out = {}
    if val_results is not None:
        transfer = evaluate(results, pool_gt, protocol="transfer", val_results=val_results, val_gt=val_gt,
                            search=search, compute_map=False, levels=["averaged"])
        out["transfer"] = _row(transfer)
    out["oracle"] = _row(evaluate(results, pool_gt, protocol="oracle", search=search, compute_map=False,
                                  levels=["averaged"]))
    return out


def _row(report) -> dict:
    row = report.row("averaged")
    return {"threshold": row.threshold, "cacc": row.cacc, "mciou": row.mciou, "acd": row.acd, "mccd": row.mccd}
