"""The one reader, writer and validator of the toolkit's file formats.

Formats (see docs/FORMATS.md at the repository root):

- **instances**: COCO instances JSON with the RPC extras (``images[].level``,
  ``categories[].supercategory``, ``annotations[].point_xy``). Unknown keys (``__raw_Chinese_name_df``, ...)
  are kept untouched. Annotations with ``iscrowd: 1`` are *ignore regions*; ``segmentation`` may hold
  polygons or COCO RLE (``{"size": [h, w], "counts": str}``).
- **pool**: an instances JSON whose ``annotations`` list is empty (unlabeled images to predict).
- **results**: a COCO results list ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
- **counts**: the counting head's output beside the results::

      {"count_classes": "category" | "supercategory" | "object",
       "images": [{"image_id": 1, "counts": {"17": 2.03}}, ...]}

  keys are category ids (as strings) for ``category``, supercategory names for ``supercategory`` and
  ``"object"`` for ``object``; values are unrounded floats; every image of the pool is listed.
- **configs** (TOML) are read and written by :mod:`rpc_metrics.toml`; image files' headers are checked by
  :mod:`rpc_metrics.images`.

Every reader accepts a path or an already-loaded object and raises :class:`FormatError`, which names the file,
the entry and what to do. Every writer is atomic (temporary file in the same folder, then rename). This module is
the public face: the file handling lives in :mod:`rpc_metrics.files`, the checks in :mod:`rpc_metrics.validate`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rpc_metrics.files import (
    FormatError,
    _load,
    atomic_output,
    image_path,
    load_json,
    write_bytes,
    write_json,
)
from rpc_metrics.validate import (
    COUNT_CLASSES,
    LEVELS,
    AnnotationArrays,
    ResultArrays,
    annotations_to_arrays,
    check_ids_in,
    results_to_arrays,
    validate_counts,
    validate_instances,
    validate_results,
)

__all__ = [
    "COUNT_CLASSES", "LEVELS", "AnnotationArrays", "FormatError", "ResultArrays", "annotations_to_arrays", "as_pool",
    "atomic_output", "check_ids_in", "decode_mask", "detect_format", "encode_mask", "image_path", "load_json",
    "read_counts", "read_instances", "read_pool", "read_results", "results_to_arrays", "validate_counts",
    "validate_file", "validate_instances", "validate_results", "write_bytes", "write_counts", "write_instances",
    "write_json", "write_results",
]


# --------------------------------------------------------------------------------------------- reading


def read_instances(obj: Any, *, source: str | None = None, require_levels: bool = False) -> dict:
    """Load (path) or take (dict) an instances/pool JSON and validate it. Unknown keys are kept."""
    dataset, name = _load(obj, source)
    validate_instances(dataset, source=name, require_levels=require_levels)
    return dataset


def read_pool(obj: Any, *, source: str | None = None) -> dict:
    """Load a pool: an instances JSON whose annotations list is empty (its image ids are the pool)."""
    dataset, name = _load(obj, source)
    if isinstance(dataset, Mapping) and "annotations" not in dataset:
        dataset = {**dataset, "annotations": []}
    validate_instances(dataset, source=name)
    return dataset


def as_pool(dataset: Mapping) -> dict:
    """A pool made from an instances JSON: the same keys, annotations emptied (labels never travel)."""
    return {**dataset, "annotations": []}


def read_results(obj: Any, *, source: str | None = None, gt: Mapping | None = None) -> list:
    """Load (path) or take (list) a COCO results list and validate it. An empty list is valid."""
    results, name = _load(obj, source)
    validate_results(results, source=name, gt=gt)
    return results


def read_counts(obj: Any, *, source: str | None = None, pool: Mapping | None = None) -> dict:
    """Load (path) or take (dict) a counts file and validate it."""
    counts, name = _load(obj, source)
    validate_counts(counts, source=name, pool=pool)
    return counts


# --------------------------------------------------------------------------------------------- writing


def write_instances(dataset: Mapping, path: str | os.PathLike) -> Path:
    """Validate and atomically write an instances (or pool) JSON."""
    validate_instances(dataset, source=str(path))
    return write_json(dataset, path)


def write_results(results: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Validate and atomically write a COCO results list."""
    validate_results(results, source=str(path))
    return write_json(list(results), path)


def write_counts(counts: Mapping, path: str | os.PathLike) -> Path:
    """Validate and atomically write a counts file."""
    validate_counts(counts, source=str(path))
    return write_json(counts, path)


# --------------------------------------------------------------------------------------------- masks


def encode_mask(mask: np.ndarray) -> dict:
    """Encode a binary mask ``[H, W]`` as JSON-ready COCO RLE ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    mask = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    if mask.ndim != 2:
        raise ValueError(f"mask should be [H, W], got shape {mask.shape}")
    rle = mask_utils.encode(mask)
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Mapping) -> np.ndarray:
    """Decode COCO RLE (compressed string or uncompressed list counts) to a ``bool[H, W]`` mask."""
    from pycocotools import mask as mask_utils

    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        compressed = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    with warnings.catch_warnings():
        # pycocotools' own numpy 2 copy-keyword deprecation, not the caller's concern.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(compressed).astype(bool)



# --------------------------------------------------------------------------------------------- any file


def detect_format(obj: Any) -> str:
    """Name the format of a loaded JSON: ``results``, ``counts``, ``pool`` or ``instances``."""
    if isinstance(obj, list):
        return "results"
    if isinstance(obj, Mapping) and "count_classes" in obj:
        return "counts"
    if isinstance(obj, Mapping) and "images" in obj:
        return "pool" if not obj.get("annotations") else "instances"
    return "unknown"


def validate_file(path: str | os.PathLike, *, gt: Mapping | None = None) -> str:
    """Validate any supported file; return a one-line summary or raise :class:`FormatError`."""
    data = load_json(path)
    kind = detect_format(data)
    name = str(path)
    if kind == "results":
        arrays = validate_results(data, source=name, gt=gt)
        return f"results: {len(arrays)} detections on {len(np.unique(arrays.image_ids))} images"
    if kind == "counts":
        validate_counts(data, source=name, pool=gt)
        return f"counts ({data['count_classes']}): {len(data['images'])} images"
    if kind in ("pool", "instances"):
        validate_instances(data, source=name)
        levels = sorted({im["level"] for im in data["images"] if "level" in im})
        level_note = f", levels {'/'.join(levels)}" if levels else ""
        return (
            f"{kind}: {len(data['images'])} images, {len(data['annotations'])} annotations, "
            f"{len(data['categories'])} categories{level_note}"
        )
    raise FormatError(name, "", "not a known format (instances/pool object, results list or counts object)")
