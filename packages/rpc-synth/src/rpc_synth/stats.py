"""What a checkout split looks like, in numbers: image side, product size, products per tray, overlap.

The same functions measure a labelled checkout split (RPC/COCO instances JSON) and a synthesized set, so the two
can be compared side by side and :mod:`rpc_synth.fit` can steer synthesis toward the checkout images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rpc_metrics.io import LEVELS, read_instances

from .compose import box_iou
from .generate import InputError

POOLED = "all"  # the level name of a split whose images carry no RPC level
_Z90 = 2.5631  # p90 - p10 of a standard normal: a quantile spread as a standard deviation


@dataclass(frozen=True)
class ImageBoxes:
    """One image's products: ``boxes (float[N, 4])`` in (x, y, w, h) pixels, ``categories (int[N])``."""

    width: int
    height: int
    level: str
    boxes: np.ndarray
    categories: np.ndarray


def largest_iou(boxes: np.ndarray) -> np.ndarray:
    """Each box's largest IoU with another box of the same image: ``float[N]`` for ``boxes (float[N, 4])`` (x, y, w, h).

    0 for a box alone in its image.
    """
    if len(boxes) < 2:
        return np.zeros(len(boxes))
    xyxy = np.column_stack([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]])
    iou = box_iou(xyxy, xyxy)
    np.fill_diagonal(iou, 0.0)
    return iou.max(axis=1)


def union_area(boxes: np.ndarray, width: float, height: float) -> float:
    """Area of the union of ``boxes (float[N, 4])`` (x, y, w, h), clipped to a ``width`` x ``height`` image.

    Exact: the box edges cut the image into a small grid of cells (at most 2N + 1 per side); a cell is covered
    when its centre lies in some box.
    """
    if len(boxes) == 0:
        return 0.0
    x1 = np.clip(boxes[:, 0], 0, width)
    y1 = np.clip(boxes[:, 1], 0, height)
    x2 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y2 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    xs, ys = np.unique(np.concatenate([x1, x2])), np.unique(np.concatenate([y1, y2]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside_x = (cx[None, :] > x1[:, None]) & (cx[None, :] < x2[:, None])  # [N, cells in x]
    inside_y = (cy[None, :] > y1[:, None]) & (cy[None, :] < y2[:, None])  # [N, cells in y]
    covered = (inside_y[:, :, None] & inside_x[:, None, :]).any(axis=0)  # [cells in y, cells in x]
    return float(np.diff(ys) @ covered @ np.diff(xs))


def _spread(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def summarize(images: list[ImageBoxes], *, kind: str = "labelled", source: str = "<in-memory>") -> dict:
    """Statistics of ``images`` (a JSON-able dict).

    - ``image_side``: median of sqrt(width * height) in px;
    - ``product_size``: sqrt(box w * h) / sqrt(image width * height), over every box: median, p10, p90, and
      ``log_spread`` = (ln(p90 / p10) / 2.563)^2 (the variance of log size, if log-normal) with its bootstrap
      standard error over images, ``log_spread_se``;
    - ``max_iou``: per image, the mean over boxes of each box's largest IoU with another box (0 when alone),
      then the mean over the images with boxes;
    - ``coverage``: per image, the area of the union of its boxes / its area, then the mean over images;
    - ``levels``: per level (``"all"`` when not every image has an RPC level): images, instances and categories
      per image (min, median, max), and that level's ``max_iou`` and ``coverage``.
    """
    if not images:
        raise InputError(f"{source}: no images to measure")
    sides = np.array([np.sqrt(im.width * im.height) for im in images])
    per_image = [np.sqrt(im.boxes[:, 2] * im.boxes[:, 3]) / side for im, side in zip(images, sides, strict=True)]
    per_image = [s[s > 0] for s in per_image]  # a zero-area box has no size
    sizes = np.concatenate(per_image)
    if len(sizes) == 0:
        raise InputError(f"{source}: no product boxes to measure (every image is empty)")
    ious = np.array([largest_iou(im.boxes).mean() if len(im.boxes) else np.nan for im in images])
    coverage = np.array([union_area(im.boxes, im.width, im.height) / (im.width * im.height) for im in images])
    levels = {}
    for level in sorted({im.level for im in images}, key=lambda lv: (*LEVELS, lv).index(lv)):
        mine = np.array([im.level == level for im in images])
        levels[level] = {
            "images": int(mine.sum()),
            "instances": _spread(np.array([len(im.boxes) for im, m in zip(images, mine, strict=True) if m])),
            "categories": _spread(np.array([len(set(im.categories.tolist())) for im, m in zip(images, mine, strict=True) if m])),
            "max_iou": _mean(ious[mine]),
            "coverage": float(coverage[mine].mean()),
        }
    return {
        "kind": kind,
        "source": source,
        "images": len(images),
        "instances": len(sizes),
        "image_side": float(np.median(sides)),
        "product_size": _size_stats(sizes, [len(s) for s in per_image]),
        "max_iou": _mean(ious),
        "coverage": float(coverage.mean()),
        "levels": levels,
    }


def log_spread(p10: float, p90: float) -> float:
    """Variance of log product size implied by its p10..p90 spread (as if log-normal)."""
    return (np.log(p90 / p10) / _Z90) ** 2


def _size_stats(sizes: np.ndarray, per_image: list[int], draws: int = 200) -> dict:
    """Median, p10, p90 of ``sizes``; ``log_spread`` and its standard error over images (a bootstrap of
    ``draws`` resamples of whole images, seeded: the same sizes give the same number)."""
    p10, p50, p90 = np.percentile(sizes, [10, 50, 90])
    starts = np.concatenate([[0], np.cumsum(per_image)])
    rng = np.random.default_rng(0)
    spreads = []
    for _ in range(draws):
        pick = rng.integers(len(per_image), size=len(per_image))
        sample = np.concatenate([sizes[starts[i] : starts[i + 1]] for i in pick])
        if len(sample):
            lo, hi = np.percentile(sample, [10, 90])
            spreads.append(log_spread(lo, hi))
    return {"median": float(p50), "p10": float(p10), "p90": float(p90),
            "log_spread": float(log_spread(p10, p90)), "log_spread_se": float(np.std(spreads))}


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else 0.0


def image_boxes(dataset: dict, source: str) -> list[ImageBoxes]:
    """The images of an instances JSON (already validated) with their non-crowd boxes."""
    by_image: dict[int, list[dict]] = {}
    for ann in dataset["annotations"]:
        if ann.get("iscrowd", 0) == 0:
            by_image.setdefault(ann["image_id"], []).append(ann)
    leveled = all(im.get("level") in LEVELS for im in dataset["images"])
    out = []
    for im in dataset["images"]:
        if "width" not in im or "height" not in im:
            raise InputError(f"{source}: images id={im['id']}: needs width and height to measure product sizes; "
                             "add them to the JSON")
        anns = by_image.get(im["id"], [])
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(len(anns), 4)
        categories = np.array([a["category_id"] for a in anns], np.int64)
        out.append(ImageBoxes(int(im["width"]), int(im["height"]), im["level"] if leveled else POOLED, boxes, categories))
    return out


def checkout_stats(instances: Any, *, source: str | None = None) -> dict:
    """Statistics (see :func:`summarize`) of a labelled checkout split: an instances JSON path or dict.

    ``iscrowd`` annotations (ignore regions) are left out. Raises :class:`FormatError` for an invalid file and
    :class:`InputError` for a split without images or without any product annotation.
    """
    name = source or (str(instances) if isinstance(instances, (str, Path)) else "<checkout>")
    dataset = read_instances(instances, source=name)
    if not dataset["images"]:
        raise InputError(f"{name}: no images; pass a labelled checkout split (RPC val/test instances JSON)")
    if not any(a.get("iscrowd", 0) == 0 for a in dataset["annotations"]):
        raise InputError(f"{name}: no product annotations (an unlabeled pool?); pass a labelled split, "
                         "or the image folder as --checkout-images to estimate from the photos")
    return summarize(image_boxes(dataset, name), source=name)
