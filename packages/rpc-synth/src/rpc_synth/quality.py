"""Measure masks and pose pruning against the mini world's truth (``DIR/exemplar_masks_true/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rpc_metrics.io import load_json, read_instances

from .image_files import read_image
from .masks import mask_file_name
from .world import TRUE_MASKS


def _read_mask(path: Path) -> np.ndarray:
    return read_image(path, what="mask file", grayscale=True) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def mask_quality(world: str | Path, masks_dir: str | Path) -> dict:
    """Mean IoU of the fine masks (and coarse ones when ``masks_dir/coarse`` exists) against the true masks."""
    world, masks_dir = Path(world), Path(masks_dir)
    views = load_json(world / TRUE_MASKS / "views.json")["views"]
    fine, coarse = [], []
    for view in views:
        name = mask_file_name(view["file_name"])
        true = _read_mask(world / TRUE_MASKS / name)
        fine.append(_iou(_read_mask(masks_dir / name), true))
        if (masks_dir / "coarse" / name).is_file():
            coarse.append(_iou(_read_mask(masks_dir / "coarse" / name), true))
    report = {"exemplars": len(views), "fine_mean_iou": float(np.mean(fine)), "fine_min_iou": float(np.min(fine)),
              "fine_share_iou_ge_0.9": float(np.mean(np.array(fine) >= 0.9))}
    if coarse:
        report["coarse_mean_iou"] = float(np.mean(coarse))
    return report


def pose_quality(world: str | Path, poses: str | Path | dict) -> dict:
    """Degenerate views (true area ratio <= 0.45) dropped, and good views lost, by the pruning in ``poses``."""
    views = load_json(Path(world) / TRUE_MASKS / "views.json")["views"]
    dataset = read_instances(poses)
    kept = {a["image_id"]: a.get("pose_kept", True) for a in dataset["annotations"]}
    degenerate = [v for v in views if v["degenerate"]]
    good = [v for v in views if not v["degenerate"]]
    return {
        "views": len(views),
        "degenerate": len(degenerate),
        "degenerate_dropped": sum(not kept[v["image_id"]] for v in degenerate),
        "good": len(good),
        "good_lost": sum(not kept[v["image_id"]] for v in good),
    }
