"""The checks of the toolkit's JSON formats (instances, pool, results, counts: see :mod:`rpc_metrics.io`), each
raising :class:`FormatError` at the first problem, naming the file, the entry and what to do.

Instances and results are checked column-wise with numpy (fast on large files); only when something is wrong
does a slow pass find and name the first bad entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rpc_metrics.files import FormatError

LEVELS = ("easy", "medium", "hard")
COUNT_CLASSES = ("category", "supercategory", "object")


def _fail(source: str, entry: str, message: str) -> None:
    raise FormatError(source, entry, message)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _no_text(values: Any) -> bool:
    """No string or bool among ``values`` (numpy would read ``"1"`` and ``True`` as numbers without a word)."""
    return not any(isinstance(v, (str, bytes, bool)) for v in values)


def _check_box(box: Any, source: str, entry: str) -> None:
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        _fail(source, entry, f"bbox should be 4 numbers [x, y, w, h], got {box!r}")
    if not all(math.isfinite(v) for v in box):
        _fail(source, entry, f"bbox has a non-finite value {box!r}")
    if box[2] < 0 or box[3] < 0:
        _fail(source, entry, f"bbox width and height must be >= 0, got {box!r}")


def _check_object(item: Any, required: Sequence[str], source: str, entry: str,
                  message: str = "should be an object") -> None:
    """Fail with ``message`` unless ``item`` is an object, then at its first missing ``required`` field."""
    if not isinstance(item, Mapping):
        _fail(source, entry, message)
    for field in required:
        if field not in item:
            _fail(source, entry, f"missing required field '{field}'")


def _check_segmentation(seg: Any, image: Mapping | None, source: str, entry: str) -> None:
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) % 2 or not all(_is_number(v) for v in poly):
                _fail(source, entry, "segmentation polygons should be lists of x, y numbers")
        return
    if not isinstance(seg, Mapping) or "size" not in seg or "counts" not in seg:
        _fail(source, entry, "segmentation should be a list of polygons or RLE {size, counts}")
    size = seg["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and v >= 0 for v in size):
        _fail(source, entry, f"RLE size should be [height, width], got {size!r}")
    if image is not None and "height" in image and "width" in image:
        if [image["height"], image["width"]] != list(size):
            _fail(
                source,
                entry,
                f"RLE size {size} differs from its image's [height, width] "
                f"[{image['height']}, {image['width']}]",
            )
    if not isinstance(seg["counts"], (str, list)):
        _fail(source, entry, "RLE counts should be a string (compressed) or a list of run lengths")


def _index_by_id(items: Any, key: str, source: str, required: Sequence[str]) -> dict[int, Mapping]:
    if not isinstance(items, list):
        _fail(source, key, f"should be a list, got {type(items).__name__}")
    index: dict[int, Mapping] = {}
    for i, item in enumerate(items):
        _check_object(item, required, source, f"{key}[{i}]")
        item_id = item["id"]
        if not _is_int(item_id):
            _fail(source, f"{key}[{i}]", f"id should be an integer, got {item_id!r}")
        if item_id in index:
            _fail(source, f"{key}[{i}]", f"duplicate id {item_id}; ids must be unique")
        index[item_id] = item
    return index


def validate_instances(dataset: Any, *, source: str = "<in-memory>", require_levels: bool = False) -> AnnotationArrays:
    """Check an instances or pool JSON; raise :class:`FormatError` at the first problem.

    Returns the annotations as columns (:class:`AnnotationArrays`), which callers may reuse.

    Checks COCO's own required fields and types, unique ids, annotation references, finite non-negative
    boxes, ``iscrowd`` in {0, 1}, segmentations, and ``level`` in easy/medium/hard where present (or on
    every image when ``require_levels``). Level ranges and ``area == w * h`` are not enforced.
    """
    if not isinstance(dataset, Mapping):
        _fail(source, "", f"should be a JSON object with images/annotations/categories, got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            _fail(source, key, "missing top-level key (an instances JSON needs images, annotations, categories)")
    images = _index_by_id(dataset["images"], "images", source, ("id", "file_name"))
    categories = _index_by_id(dataset["categories"], "categories", source, ("id", "name"))
    for image_id, image in images.items():
        entry = f"images id={image_id}"
        for field in ("width", "height"):
            if field in image and not (_is_int(image[field]) and image[field] > 0):
                _fail(source, entry, f"{field} should be a positive integer, got {image[field]!r}")
        level = image.get("level")
        if level is None and require_levels:
            _fail(source, entry, "missing 'level' (easy|medium|hard), needed for per-level rows; pass --levels averaged")
        if level is not None and level not in LEVELS:
            _fail(source, entry, f"level should be one of {LEVELS}, got {level!r}")
    return annotations_to_arrays(dataset["annotations"], images, categories, source)


@dataclass(frozen=True)
class AnnotationArrays:
    """Annotations as columns: ``boxes (float64[N, 4])`` in (x, y, w, h); ``area`` is w * h where absent."""

    ids: np.ndarray
    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray


def _integral(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values) & (values == np.round(values))))


def annotations_to_arrays(annotations: Any, images: Mapping[int, Mapping], categories: Mapping[int, Mapping],
                          source: str) -> AnnotationArrays:
    """Check annotations column-wise (fast); on any problem, find and name the first bad entry."""
    if not isinstance(annotations, list):
        _fail(source, "annotations", "should be a list")
    n = len(annotations)
    try:
        # One pass over the annotations (a bbox of another length makes the rows ragged and fails here).
        table = np.array([(a["id"], a["image_id"], a["category_id"], a.get("iscrowd", 0), a.get("area", np.nan),
                           *a["bbox"]) for a in annotations], dtype=np.float64).reshape(n, 9)
        ids, image_ids, category_ids, iscrowd, area = table[:, :5].T
        boxes = table[:, 5:]
        well_typed = all(type(a["id"]) is int and type(a["image_id"]) is int and type(a["category_id"]) is int
                         and _no_text((*a["bbox"], a.get("area", 0))) for a in annotations)
        points = [a["point_xy"] for a in annotations if a.get("point_xy") is not None]
        well_typed = well_typed and all(_no_text(point) for point in points)
        point_array = np.array(points, dtype=np.float64).reshape(len(points), 2)
        segmented = [i for i, a in enumerate(annotations) if a.get("segmentation")]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        _explain_bad_annotation(annotations, images, categories, source)
    image_known = np.fromiter(images, np.float64, len(images))
    category_known = np.fromiter(categories, np.float64, len(categories))
    has_area = ~np.isnan(area)
    good = (
        well_typed and _integral(ids) and _integral(image_ids) and _integral(category_ids)
        and len(np.unique(ids)) == n
        and bool(np.isin(image_ids, image_known).all()) and bool(np.isin(category_ids, category_known).all())
        and bool(np.isfinite(boxes).all()) and bool((boxes[:, 2:] >= 0).all())
        and bool(np.isin(iscrowd, (0, 1)).all())
        and bool(np.isfinite(area[has_area]).all())
        and bool(np.isfinite(point_array).all())
    )
    if not good:
        _explain_bad_annotation(annotations, images, categories, source)
    for i in segmented:
        ann = annotations[i]
        _check_segmentation(ann["segmentation"], images[ann["image_id"]], source, f"annotations[{i}]")
    return AnnotationArrays(
        ids=ids.astype(np.int64), image_ids=image_ids.astype(np.int64), category_ids=category_ids.astype(np.int64),
        boxes=boxes, iscrowd=iscrowd.astype(np.int64),
        area=np.where(has_area, area, boxes[:, 2] * boxes[:, 3]),
    )


def _explain_bad_annotation(annotations: list, images: Mapping, categories: Mapping, source: str) -> None:
    """Slow path: find the first malformed annotation and say what is wrong with it."""
    seen: set[int] = set()
    for i, ann in enumerate(annotations):
        entry = f"annotations[{i}]"
        _check_object(ann, ("id", "image_id", "category_id", "bbox"), source, entry)
        if not _is_int(ann["id"]) or ann["id"] in seen:
            _fail(source, entry, f"id {ann['id']!r} should be a unique integer")
        seen.add(ann["id"])
        if ann["image_id"] not in images:
            _fail(source, entry, f"image_id {ann['image_id']!r} is not in images")
        if ann["category_id"] not in categories:
            _fail(source, entry, f"category_id {ann['category_id']!r} is not in categories")
        _check_box(ann["bbox"], source, entry)
        if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd"), bool):
            _fail(source, entry, f"iscrowd should be 0 or 1, got {ann['iscrowd']!r}")
        if "area" in ann and not (_is_number(ann["area"]) and math.isfinite(ann["area"])):
            _fail(source, entry, f"area should be a finite number, got {ann['area']!r}")
        point = ann.get("point_xy")
        if point is not None and (
            not isinstance(point, list) or len(point) != 2 or not all(_is_number(v) and math.isfinite(v) for v in point)
        ):
            _fail(source, entry, f"point_xy should be [x, y], got {point!r}")
        if ann.get("segmentation"):
            _check_segmentation(ann["segmentation"], images[ann["image_id"]], source, entry)
    _fail(source, "annotations", "could not read the annotations")



@dataclass(frozen=True)
class ResultArrays:
    """A results list as columns: ``boxes (float64[N, 4])`` in (x, y, w, h), ``scores (float64[N])``."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def results_to_arrays(results: Sequence[Mapping], *, source: str = "<in-memory>") -> ResultArrays:
    """Convert a results list to columns, checking fields, types and finiteness (vectorized)."""
    if not isinstance(results, list):
        _fail(source, "", f"a results file should be a JSON list of detections, got {type(results).__name__}")
    n = len(results)
    try:
        # One pass over the detections (a bbox of another length makes the rows ragged and fails here).
        table = np.array([(d["image_id"], d["category_id"], d["score"], *d["bbox"]) for d in results],
                         dtype=np.float64).reshape(n, 7)
        image_ids, category_ids = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
        scores, boxes = table[:, 2].copy(), table[:, 3:].copy()
        well_typed = all(
            type(d["image_id"]) is int and type(d["category_id"]) is int and type(d["score"]) in (float, int)
            and _no_text(d["bbox"]) for d in results
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        well_typed = False
    if not well_typed:
        _explain_bad_result(results, source)
    bad = ~(np.isfinite(scores) & np.isfinite(boxes).all(axis=1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        _fail(source, f"[{i}]", f"non-finite score or bbox ({results[i].get('score')!r}, {results[i].get('bbox')!r})")
    negative = (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        _fail(source, f"[{i}]", f"bbox width and height must be >= 0, got {results[i]['bbox']!r}")
    return ResultArrays(image_ids, category_ids, boxes, scores)


def _explain_bad_result(results: Sequence[Any], source: str) -> None:
    """Slow path: find the first malformed detection and say what is wrong with it."""
    for i, d in enumerate(results):
        entry = f"[{i}]"
        _check_object(d, ("image_id", "category_id", "bbox", "score"), source, entry,
                      "each detection should be an object {image_id, category_id, bbox, score}")
        for field in ("image_id", "category_id"):
            if not _is_int(d[field]):
                _fail(source, entry, f"{field} should be an integer, got {d[field]!r}")
        if not _is_number(d["score"]):
            _fail(source, entry, f"score should be a number, got {d['score']!r}")
        _check_box(d["bbox"], source, entry)
    _fail(source, "", "could not read the detections")


def validate_results(
    results: Any, *, source: str = "<in-memory>", gt: Mapping | None = None
) -> ResultArrays:
    """Check a results list (and, with ``gt``, that its image and category ids exist there)."""
    arrays = results_to_arrays(results, source=source)
    if gt is not None:
        check_ids_in(arrays.image_ids, {im["id"] for im in gt["images"]}, "image_id", source, "ground truth")
        check_ids_in(arrays.category_ids, {c["id"] for c in gt["categories"]}, "category_id", source, "ground truth")
    return arrays


def check_ids_in(ids: np.ndarray, known: set, field: str, source: str, where: str) -> None:
    """Raise naming the first entry whose ``field`` is not among ``known``."""
    known_arr = np.fromiter(known, dtype=np.int64, count=len(known))
    missing = ~np.isin(ids, known_arr)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        _fail(source, f"[{i}]", f"{field} {int(ids[i])} is not in the {where}; results must match the GT file")


def validate_counts(counts: Any, *, source: str = "<in-memory>", pool: Mapping | None = None) -> None:
    """Check a counts file; with ``pool``, every pool image must be listed and no other."""
    if not isinstance(counts, Mapping) or "images" not in counts or "count_classes" not in counts:
        _fail(source, "", "a counts file should be an object with 'count_classes' and 'images'")
    if counts["count_classes"] not in COUNT_CLASSES:
        _fail(source, "count_classes", f"should be one of {COUNT_CLASSES}, got {counts['count_classes']!r}")
    if not isinstance(counts["images"], list):
        _fail(source, "images", "should be a list of {image_id, counts}")
    listed: set[int] = set()
    for i, item in enumerate(counts["images"]):
        entry = f"images[{i}]"
        if not isinstance(item, Mapping) or not _is_int(item.get("image_id")) or not isinstance(item.get("counts"), Mapping):
            _fail(source, entry, "should be {\"image_id\": int, \"counts\": {class: float}}")
        if item["image_id"] in listed:
            _fail(source, entry, f"image_id {item['image_id']} listed twice")
        listed.add(item["image_id"])
        for key, value in item["counts"].items():
            if not isinstance(key, str):
                _fail(source, entry, f"count key {key!r} should be a string")
            if not (_is_number(value) and math.isfinite(value)):
                _fail(source, entry, f"count for {key!r} should be a finite number, got {value!r}")
    if pool is not None:
        pool_ids = {im["id"] for im in pool["images"]}
        missing, extra = pool_ids - listed, listed - pool_ids
        if missing:
            _fail(source, "images", f"{len(missing)} pool images are not listed (e.g. image_id {min(missing)}); list every image")
        if extra:
            _fail(source, "images", f"image_id {min(extra)} is not in the pool")

