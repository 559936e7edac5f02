"""Count metrics of the counting view's counts file against the ground truth: exact-count accuracy and error.

These read the same files as rpc-metrics and belong there in time (``count_accuracy`` and ``count_error``); until
then dpsnet keeps them in this one module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rpc_metrics.io import read_instances

from .data import CategoryMap


def _half_up(value: float) -> int:
    return math.floor(float(value) + 0.5)


def count_accuracy(counts: Mapping, gt: Mapping | str | Path, *, total: bool = False) -> float:
    """Fraction of ground-truth images whose rounded counts (counting view alone) equal the true counts for
    every class (``total``: the rounded sum over classes equals the number of objects); ``iscrowd`` annotations
    are not counted. Counts are rounded half up, as kd-loop's agreement check rounds them (Python's ``round``
    would send 2.5 to 2)."""
    gt = read_instances(gt)
    categories = CategoryMap.from_categories(gt["categories"], counts["count_classes"])
    key_of = {cid: categories.count_names[categories.count_class_of_label[i + 1]]
              for i, cid in enumerate(categories.category_ids)}
    truth: dict[int, dict[str, int]] = {im["id"]: {} for im in gt["images"]}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            key = key_of[ann["category_id"]]
            truth[ann["image_id"]][key] = truth[ann["image_id"]].get(key, 0) + 1
    if total:
        predicted_total = {e["image_id"]: _half_up(sum(e["counts"].values())) for e in counts["images"]}
        right = sum(predicted_total.get(i, 0) == sum(true.values()) for i, true in truth.items())
        return right / max(len(truth), 1)
    predicted = {e["image_id"]: {k: n for k, n in ((k, _half_up(v)) for k, v in e["counts"].items()) if n > 0}
                 for e in counts["images"]}
    right = sum(predicted.get(image_id, {}) == true for image_id, true in truth.items())
    return right / max(len(truth), 1)


def count_error(counts: Mapping, gt: Mapping | str | Path) -> dict[str, float]:
    """The counting view's error on each image's total, before rounding: ``{"mae": mean |predicted - true|,
    "bias": mean (predicted - true)}`` in objects per image, over the ground truth's images (an image missing
    from ``counts`` predicts 0; ``iscrowd`` annotations are not counted)."""
    gt = read_instances(gt)
    ids = [im["id"] for im in gt["images"]]
    if not ids:
        return {"mae": 0.0, "bias": 0.0}
    row = {image_id: i for i, image_id in enumerate(ids)}
    true = np.zeros(len(ids))
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in gt["annotations"]], dtype=bool)
    owners = np.array([row[a["image_id"]] for a in gt["annotations"]], dtype=np.int64)
    np.add.at(true, owners[~crowd], 1.0)
    predicted = np.zeros(len(ids))
    for entry in counts["images"]:
        if entry["image_id"] in row:
            predicted[row[entry["image_id"]]] = sum(entry["counts"].values())
    diff = predicted - true
    return {"mae": float(np.abs(diff).mean()), "bias": float(diff.mean())}
