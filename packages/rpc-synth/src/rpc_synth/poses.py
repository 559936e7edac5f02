"""Pose pruning: drop exemplar views whose mask is much smaller than the SKU's largest view.

``ratio = mask area / largest mask area of the same SKU``; a view is kept when ``ratio > threshold``
(0.45 as in DPSNet). A can seen from the top or a flat pack seen edge-on falls far below.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from rpc_metrics.io import FormatError, read_instances, write_instances


def pose_ratios(annotations: list[dict], *, source: str = "<masks>") -> dict[int, float]:
    """``{annotation id: mask area / largest mask area of its category}`` (needs ``mask_area`` or ``area``)."""
    largest: dict[int, float] = defaultdict(float)
    areas = {}
    for i, ann in enumerate(annotations):
        if ann.get("iscrowd", 0):
            continue
        area = ann.get("mask_area")
        if area is None:
            raise FormatError(source, f"annotations[{i}]", "has no 'mask_area'; run `rpc-synth masks` first")
        areas[ann["id"]] = float(area)
        largest[ann["category_id"]] = max(largest[ann["category_id"]], float(area))
    by_id = {ann["id"]: ann for ann in annotations}
    return {i: (a / largest[by_id[i]["category_id"]] if largest[by_id[i]["category_id"]] > 0 else 0.0)
            for i, a in areas.items()}


def prune_poses(masks: Any, out: str | Path | None = None, *, threshold: float = 0.45) -> dict:
    """Add ``pose_ratio`` and ``pose_kept`` to every annotation of a masks JSON; write it to ``out`` if given."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold should be in [0, 1), got {threshold}")
    source = str(masks) if isinstance(masks, (str, Path)) else "<masks>"
    dataset = read_instances(masks, source=source)
    ratios = pose_ratios(dataset["annotations"], source=source)
    annotations = []
    for ann in dataset["annotations"]:
        if ann["id"] in ratios:
            ratio = ratios[ann["id"]]
            ann = {**ann, "pose_ratio": round(ratio, 4), "pose_kept": bool(ratio > threshold)}
        annotations.append(ann)
    result = {**dataset, "annotations": annotations}
    if out is not None:
        write_instances(result, out)
    return result


def pose_summary(dataset: dict) -> dict:
    """Counts of kept and dropped views, overall and the categories left with no view."""
    kept = [a for a in dataset["annotations"] if a.get("pose_kept")]
    dropped = [a for a in dataset["annotations"] if a.get("pose_kept") is False]
    categories = {a["category_id"] for a in dataset["annotations"]}
    empty = sorted(categories - {a["category_id"] for a in kept})
    return {"views": len(kept) + len(dropped), "kept": len(kept), "dropped": len(dropped), "categories_without_views": empty}
