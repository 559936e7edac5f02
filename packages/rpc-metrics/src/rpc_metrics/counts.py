"""A counts file (the counting view's output, :mod:`rpc_metrics.io`) against the ground truth: the counting classes
of a category list, each image's true and counted totals, exact-count accuracy and count error.

The counting classes of ``count_classes``: ``category`` (one per category, keyed by its id as a string, in id
order), ``supercategory`` (one per supercategory name, sorted by name) or ``object`` (one, ``"object"``). Counts
are rounded half up (``floor(x + 0.5)``: 2.5 counts 3), as kd-loop's agreement check rounds them; ``iscrowd``
annotations (ignore regions) are never counted.

>>> count_class_index([{"id": 7, "supercategory": "drink"}, {"id": 3, "supercategory": "candy"}], "supercategory")
({3: 0, 7: 1}, ['candy', 'drink'])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from rpc_metrics.io import read_instances
from rpc_metrics.validate import COUNT_CLASSES


def count_class_index(categories: Sequence[Mapping], count_classes: str) -> tuple[dict[int, int], list[str]]:
    """``({category id: index of its counting class}, [the classes' keys in a counts file])`` for
    ``count_classes`` in ``category | supercategory | object`` (see the module docstring)."""
    if count_classes not in COUNT_CLASSES:
        raise ValueError(f"count_classes should be one of {COUNT_CLASSES}, got {count_classes!r}")
    cats = sorted(categories, key=lambda c: c["id"])
    if count_classes == "object":
        return {c["id"]: 0 for c in cats}, ["object"]
    if count_classes == "supercategory":
        names = sorted({str(c.get("supercategory", "")) for c in cats})
        return {c["id"]: names.index(str(c.get("supercategory", ""))) for c in cats}, names
    return {c["id"]: i for i, c in enumerate(cats)}, [str(c["id"]) for c in cats]


def true_totals(gt: Mapping, image_ids: np.ndarray) -> np.ndarray:
    """The number of true (non-crowd) objects of each image of ``image_ids`` in ``gt``, ``float64[N]``."""
    row = {int(i): k for k, i in enumerate(image_ids.tolist())}
    totals = np.zeros(len(image_ids), dtype=np.float64)
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0) and ann["image_id"] in row:
            totals[row[ann["image_id"]]] += 1
    return totals


def view_totals(counts: Mapping, image_ids: np.ndarray) -> np.ndarray:
    """The counting view's unrounded total of each image of ``image_ids`` over the counts file's classes (the
    same whatever its ``count_classes``), ``float64[N]``; an image the file does not list counts 0."""
    row = {int(i): k for k, i in enumerate(image_ids.tolist())}
    totals = np.zeros(len(image_ids), dtype=np.float64)
    for item in counts["images"]:
        if item["image_id"] in row:
            totals[row[item["image_id"]]] += sum(float(v) for v in item["counts"].values())
    return totals


def half_up(value):
    """The toolkit's rounding of counts, ``floor(x + 0.5)`` (2.5 counts 3): an int for a number, an int64 array for
    an array (kd-loop's agreement check, dpsnet's receipts and the metrics here all round with it)."""
    if isinstance(value, np.ndarray):
        return np.floor(value + 0.5).astype(np.int64)
    return math.floor(float(value) + 0.5)


def count_accuracy(counts: Mapping, gt: Mapping | str | os.PathLike, *, total: bool = False) -> float:
    """The fraction of the ground truth's images whose rounded counts equal the true counts for every class of the
    counts file's ``count_classes`` (``total``: whose rounded sum over classes equals the number of objects)."""
    gt = read_instances(gt)
    class_of, keys = count_class_index(gt["categories"], counts["count_classes"])
    truth: dict[int, dict[str, int]] = {im["id"]: {} for im in gt["images"]}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            key = keys[class_of[ann["category_id"]]]
            truth[ann["image_id"]][key] = truth[ann["image_id"]].get(key, 0) + 1
    if total:
        predicted_total = {e["image_id"]: half_up(sum(e["counts"].values())) for e in counts["images"]}
        right = sum(predicted_total.get(i, 0) == sum(true.values()) for i, true in truth.items())
        return right / max(len(truth), 1)
    predicted = {e["image_id"]: {k: n for k, n in ((k, half_up(v)) for k, v in e["counts"].items()) if n > 0}
                 for e in counts["images"]}
    right = sum(predicted.get(image_id, {}) == true for image_id, true in truth.items())
    return right / max(len(truth), 1)


def count_error(counts: Mapping, gt: Mapping | str | os.PathLike) -> dict[str, float]:
    """The counting view's error on each image's total, before rounding: ``{"mae": mean |counted - true|,
    "bias": mean (counted - true)}`` in objects per image, over the ground truth's images."""
    gt = read_instances(gt)
    ids = np.array([im["id"] for im in gt["images"]], dtype=np.int64)
    if not len(ids):
        return {"mae": 0.0, "bias": 0.0}
    diff = view_totals(counts, ids) - true_totals(gt, ids)
    return {"mae": float(np.abs(diff).mean()), "bias": float(diff.mean())}
