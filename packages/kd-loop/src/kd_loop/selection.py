"""Label-free selection of pseudo-labels: predictions in, a pseudo-labelled dataset and statistics out.

The selector receives a *pool* (an instances JSON whose annotations are empty), the teacher's results and
counts, and nothing else: it refuses a pool that carries annotations, so ground truth cannot reach it.

Policies (composable):

- ``image``: keep an image when, for every count class, the number of detections scoring ``>= threshold``
  equals the counting view's count times ``count_scale`` (its calibration, 1 by default) rounded half up; its
  confident detections become its labels.
- ``instance``: in every image, detections scoring ``>= threshold`` become labels and those scoring in
  ``[ignore_threshold, threshold)`` become ignore regions (``iscrowd: 1``: neither object nor background).
- ``image+instance``: images chosen by ``image``, labelled by ``instance``.
- ``random``: the control of ``image``: as many images as ``image`` would choose (fallback included), drawn at
  random (seeded), labelled by ``instance``.
- ``random-instance``: the control of ``instance``: as many labels as ``instance`` would keep, drawn at random
  (seeded) among the detections scoring ``>= ignore_threshold``; the other ones of those become ignore regions.

An image needs at least ``min_boxes`` labels to be selected. When fewer than ``min_images`` images agree, the
image-level policies top up with the ``fallback``: ``closest`` adds the other images (with ``min_boxes`` labels)
closest to agreement (:func:`closest_to_agreement`), ``none`` adds nothing; ``stats`` says which and why. The agreement is checked per ``count_classes``:
``category``, ``supercategory``, ``object`` (one total per image), or ``auto`` (the default): the classes the
counts file counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rpc_metrics.counts import count_class_index, half_up
from rpc_metrics.io import results_to_arrays

POLICIES = ("image", "instance", "image+instance", "random", "random-instance")
IMAGE_LEVEL = ("image", "image+instance", "random")
# Each policy's same-compute random control (kd-loop's ``selection.control = "random"``).
RANDOM_CONTROL = {"image": "random", "image+instance": "random", "random": "random", "instance": "random-instance",
                  "random-instance": "random-instance"}
FALLBACKS = ("closest", "none")
GRANULARITY = {"category": 0, "supercategory": 1, "object": 2}


@dataclass(frozen=True)
class SelectionPolicy:
    """How pseudo-labels are chosen in one round (see the module docstring)."""

    policy: str = "image+instance"
    threshold: float = 0.8
    ignore_threshold: float = 0.5
    count_classes: str = "auto"
    min_boxes: int = 1
    seed: int = 0
    count_scale: float = 1.0
    min_images: int = 0
    fallback: str = "closest"

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy should be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.count_classes not in ("auto", *GRANULARITY):
            raise ValueError(f"count_classes should be auto, {', '.join(GRANULARITY)}, got {self.count_classes!r}")
        if not self.ignore_threshold <= self.threshold:
            raise ValueError("ignore_threshold should be <= threshold")
        if not (np.isfinite(self.count_scale) and self.count_scale > 0):
            raise ValueError(f"count_scale should be a positive number, got {self.count_scale!r}")
        if self.min_images < 0:
            raise ValueError(f"min_images should be >= 0, got {self.min_images!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback should be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")


def _view_counts(counts: Mapping, image_ids: np.ndarray, keys: list[str], count_classes: str,
                 class_of: Mapping[int, int], scale: float = 1.0) -> np.ndarray:
    """The counting view's counts times ``scale``, rounded half up, as ``int[N images, C classes]``.

    A counts file finer than ``count_classes`` (per category, compared per supercategory or in total) is
    summed into the coarser classes before rounding: the agreement check may be coarser than the counter.
    """
    file_classes = counts.get("count_classes")
    if file_classes not in GRANULARITY or GRANULARITY[file_classes] > GRANULARITY[count_classes]:
        raise ValueError(
            f"the counts file counts {file_classes!r}, finer classes than it has cannot be compared: "
            f"set selection.count_classes to {file_classes!r} or coarser (supercategory, object)"
        )
    column = {key: j for j, key in enumerate(keys)}
    if file_classes != count_classes:
        if file_classes == "supercategory":  # -> object
            column = None
        else:
            column = {str(cid): j for cid, j in class_of.items()}
    matrix = np.zeros((len(image_ids), len(keys)), dtype=np.float64)
    row_of = {int(i): r for r, i in enumerate(image_ids.tolist())}
    for item in counts["images"]:
        r = row_of.get(item["image_id"])
        if r is None:
            continue
        for key, value in item["counts"].items():
            if column is not None and key not in column:
                raise ValueError(f"counts of image {item['image_id']} name class {key!r}, which the pool does not have")
            matrix[r, 0 if column is None else column[key]] += float(value)
    return half_up(scale * matrix)


def closest_to_agreement(detected: np.ndarray, view: np.ndarray, image_ids: np.ndarray, candidates: np.ndarray,
                         n: int) -> np.ndarray:
    """The ``n`` candidate images closest to agreement, as row indices in that order.

    ``detected`` and ``view`` are ``int[N, C]`` (confident detections and scaled rounded counts per class);
    ``candidates`` is ``bool[N]``. Rows are ranked by the disagreement ``d_i = sum_k |detected_ik - view_ik|``,
    ascending, ties broken by image id, ascending: the same inputs always give the same images.
    """
    rows = np.flatnonzero(candidates)
    disagreement = np.abs(detected[rows] - view[rows]).sum(axis=1)
    return rows[np.lexsort((image_ids[rows], disagreement))][:n]


def select_pseudo_labels(pool: Mapping, results: list, counts: Mapping | None,
                         policy: SelectionPolicy) -> tuple[dict, dict]:
    """Choose pseudo-labels; return ``(dataset, stats)``.

    ``dataset`` is an instances JSON of the selected pool images with the pseudo-labels as annotations
    (``score`` kept on each); ``stats`` counts images, labels and ignore regions.
    """
    if pool.get("annotations"):
        raise ValueError("selection takes a pool without annotations (ground truth never reaches the selector); "
                         "load it with rpc_metrics.io.as_pool")
    image_ids = np.array(sorted(im["id"] for im in pool["images"]), dtype=np.int64)
    det = results_to_arrays(results, source="predictions")
    count_classes = policy.count_classes
    if count_classes == "auto":  # the counter's own classes (per category when there is no counts file)
        count_classes = counts.get("count_classes") if counts is not None else "category"
        if count_classes not in GRANULARITY:
            raise ValueError(f"the counts file's count_classes should be one of {', '.join(GRANULARITY)}, "
                             f"got {count_classes!r}")
    class_of, keys = count_class_index(pool["categories"], count_classes)
    cat_ids = np.array(sorted(class_of), dtype=np.int64)
    known = np.isin(det.image_ids, image_ids) & np.isin(det.category_ids, cat_ids)
    if not known.all():
        bad = int(np.flatnonzero(~known)[0])
        raise ValueError(f"prediction [{bad}] names an image or category that is not in the pool")
    row = np.searchsorted(image_ids, det.image_ids)
    cls = np.array([class_of[c] for c in cat_ids.tolist()], dtype=np.int64)[np.searchsorted(cat_ids, det.category_ids)]
    confident = det.scores >= policy.threshold
    uncertain = (det.scores >= policy.ignore_threshold) & ~confident
    if policy.policy == "random-instance":  # the same number of labels, drawn among every candidate
        candidate = confident | uncertain
        drawn = np.random.default_rng(policy.seed).choice(np.flatnonzero(candidate), size=int(confident.sum()),
                                                          replace=False)
        confident = np.zeros_like(confident)
        confident[drawn] = True
        uncertain = candidate & ~confident
    n_images, n_classes = len(image_ids), len(keys)
    detected = np.bincount(row[confident] * n_classes + cls[confident], minlength=n_images * n_classes)
    detected = detected.reshape(n_images, n_classes)
    enough = detected.sum(axis=1) >= policy.min_boxes

    if policy.policy in IMAGE_LEVEL:
        if counts is None:
            raise ValueError(f"policy {policy.policy!r} needs the counting view's counts file")
        view = _view_counts(counts, image_ids, keys, count_classes, class_of, policy.count_scale)
        selected, shortfall = _select_images(policy, detected, view, image_ids, enough)
    else:
        selected, shortfall = enough, _shortfall(policy, n_images, None, 0, int(enough.sum()))

    with_ignore = policy.policy != "image"
    keep = selected[row] & (confident | (uncertain & with_ignore))
    dataset = _pseudo_dataset(pool, image_ids[selected], results, np.flatnonzero(keep), confident)
    stats = {
        "policy": policy.policy, "threshold": policy.threshold, "ignore_threshold": policy.ignore_threshold,
        "pool_images": n_images, "selected_images": int(selected.sum()),
        "boxes": int((keep & confident).sum()), "ignore_regions": int((keep & ~confident).sum()),
        "count_scale": policy.count_scale, "min_images": policy.min_images,
        "fallback": policy.fallback if policy.policy in IMAGE_LEVEL else None, **shortfall,
    }
    return dataset, stats


def _select_images(policy: SelectionPolicy, detected: np.ndarray, view: np.ndarray, image_ids: np.ndarray,
                   enough: np.ndarray) -> tuple[np.ndarray, dict]:
    """The images (``bool[N]``) an image-level policy keeps: those whose detections agree with the scaled rounded
    counts, topped up by the fallback up to ``min_images``; ``random`` draws as many among ``enough``."""
    agree = (detected == view).all(axis=1) & enough
    selected = agree.copy()
    if policy.fallback == "closest" and agree.sum() < policy.min_images:
        selected[closest_to_agreement(detected, view, image_ids, enough & ~agree,
                                      policy.min_images - int(agree.sum()))] = True
    shortfall = _shortfall(policy, len(image_ids), int(agree.sum()), int((selected & ~agree).sum()), 0)
    if policy.policy == "random":
        candidates = np.flatnonzero(enough)
        chosen = np.random.default_rng(policy.seed).choice(candidates, size=int(selected.sum()), replace=False) \
            if len(candidates) else candidates
        selected = np.zeros(len(image_ids), dtype=bool)
        selected[chosen] = True
    return selected, shortfall


def _shortfall(policy: SelectionPolicy, n_images: int, n_agree: int | None, n_fallback: int, n_labelled: int) -> dict:
    """How many images agreed (None for instance-level policies, which have ``n_labelled`` images with labels and
    no fallback), how many the fallback added, and why the minimum was missed (None when it was not)."""
    reason = None
    if n_agree is None:
        if n_labelled < policy.min_images:
            reason = (f"only {n_labelled} of {n_images} images have at least {policy.min_boxes} label(s), fewer than "
                      f"the minimum {policy.min_images} (instance-level policies have no fallback)")
    elif n_agree < policy.min_images:
        reason = f"{n_agree} of {n_images} images agreed, fewer than the minimum {policy.min_images}: "
        if policy.fallback == "none":
            reason += "fallback 'none' adds no image"
        else:
            reason += (f"the fallback 'closest' added the {n_fallback} other images closest to agreement"
                       + ("" if n_agree + n_fallback >= policy.min_images else
                          f" (no other image has at least {policy.min_boxes} label(s))"))
    return {"agreeing_images": n_agree, "fallback_images": n_fallback, "reason": reason}


def _pseudo_dataset(pool: Mapping, selected_ids: np.ndarray, results: list, kept: np.ndarray,
                    confident: np.ndarray) -> dict:
    chosen = set(selected_ids.tolist())
    annotations = []
    for n, i in enumerate(kept.tolist(), start=1):
        det = results[i]
        x, y, w, h = (float(v) for v in det["bbox"])
        annotations.append({
            "id": n, "image_id": det["image_id"], "category_id": det["category_id"], "bbox": [x, y, w, h],
            "area": w * h, "iscrowd": 0 if confident[i] else 1, "segmentation": [],
            "point_xy": [x + w / 2, y + h / 2], "score": float(det["score"]),
        })
    return {**{k: v for k, v in pool.items() if k not in ("images", "annotations")},
            "images": [im for im in pool["images"] if im["id"] in chosen], "annotations": annotations}
