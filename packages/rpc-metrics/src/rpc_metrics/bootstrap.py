"""Percentile bootstrap intervals over checkout images, and paired differences between two models.

The test images are one sample of checkouts; a metric measured on them moves with the sample. A resample
draws ``N`` of the ``N`` images with replacement (``numpy.random.default_rng(seed)``, so it is fixed by the
seed). Drawing an image twice is giving it weight 2, so resample ``b`` is a row of multiplicities
``W[b] (int64[N])`` summing to ``N``, and each metric is computed with those weights. With the per-image
count matrices ``P``, ``G`` (``[N, K]``):

- cAcc_b  = (W @ [sum_k |P_ik - G_ik| == 0])_b / N
- ACD_b   = (W @ sum_k |P_ik - G_ik|)_b / N
- mCCD_b  = mean over k with (W @ G)_bk > 0 of (W @ |P - G|)_bk / (W @ G)_bk
- mCIoU_b = mean over k with (W @ max(P, G))_bk > 0 of (W @ min(P, G))_bk / (W @ max(P, G))_bk

all resamples at once, from one matrix product of ``W`` with the stacked per-image terms; mAP50 and mmAP
come from the weighted COCO accumulation (:func:`rpc_metrics.cocoeval.weighted_precision_table`), one
resample at a time. A category whose denominator is zero in a resample is left out of that resample's mean,
as :mod:`rpc_metrics.counting` does.

The interval is the percentile one: the ``(1 - c) / 2`` and ``(1 + c) / 2`` quantiles (numpy's linear
interpolation) of the resampled values, over the resamples where the metric is defined (None if none is).
The score threshold stays fixed: the interval measures the sampling noise of the test images, not the
choice of threshold. A paired comparison scores both models on the same resamples and takes the quantiles
of their differences; what the images share (their difficulty) cancels.

>>> import numpy as np
>>> gt = np.tile([[1, 0], [2, 1], [0, 1], [1, 1]], (10, 1))      # 40 images, 2 categories
>>> pred = np.tile([[1, 0], [1, 1], [0, 1], [1, 2]], (10, 1))    # half of them counted exactly
>>> indices = resample_indices(40, n_boot=1000, seed=0)          # [1000, 40]
>>> multiplicities(indices).sum(axis=1).tolist() == [40] * 1000
True
>>> values = row_resamples(pred, gt, indices)                    # no detections given: no mAP
>>> percentile_interval(values["cacc"], confidence=0.95), percentile_interval(values["map50"], 0.95)
([0.35, 0.65], None)
"""

from __future__ import annotations

import math

import numpy as np

from rpc_metrics import cocoeval

METRICS = ("cacc", "mciou", "acd", "mccd", "map50", "mmap")


def check_bootstrap(n_boot: int, confidence: float, seed: int = 0, *, name: str = "n_boot", minimum: int = 0) -> None:
    """Raise ValueError unless ``n_boot`` is an integer >= ``minimum``, ``0 < confidence < 1`` and ``seed`` an
    integer >= 0 (``name``: how the caller calls ``n_boot``)."""
    def is_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(n_boot) or n_boot < minimum:
        raise ValueError(f"{name} should be an integer >= {minimum} (the number of bootstrap resamples), "
                         f"got {n_boot!r}")
    if not (isinstance(confidence, (int, float)) and math.isfinite(confidence) and 0 < confidence < 1):
        raise ValueError(f"confidence should be a number strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"the bootstrap seed should be an integer >= 0, got {seed!r}")


def resample_indices(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    """``int64[n_boot, n_images]``: each row draws ``n_images`` image positions with replacement."""
    if n_images == 0:
        return np.zeros((n_boot, 0), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))


def multiplicities(indices: np.ndarray) -> np.ndarray:
    """How many times each image is drawn: ``int64[B, N]`` from ``indices (int[B, N])`` (bincount per row)."""
    n_boot, n_images = indices.shape
    flat = (indices + n_images * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_images).reshape(n_boot, n_images)


def _ratio_means(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Per row of ``[B, K]`` sums, the mean of the defined ratios (denominator > 0); NaN where none is."""
    defined = denominator > 0
    ratios = np.where(defined, numerator / np.where(defined, denominator, 1), 0.0)
    n_defined = defined.sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(n_defined > 0, ratios.sum(axis=1) / n_defined, np.nan)


def counting_resamples(pred: np.ndarray, gt: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """cAcc, ACD, mCCD, mCIoU of every resample: ``float64[B]`` each, NaN where undefined.

    ``pred``, ``gt``: count matrices ``[N images, K categories]``; ``weights (int[B, N])``: multiplicities.
    Every weighted sum comes from one matrix product ``W @ [|P - G|, G, min, max, exact, sum_k |P - G|]``.
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    n, k = pred.shape
    diff = np.abs(pred - gt)
    per_image = np.hstack([diff, gt, np.minimum(pred, gt), np.maximum(pred, gt),
                           (diff.sum(axis=1) == 0)[:, None], diff.sum(axis=1)[:, None]])
    sums = np.asarray(weights, dtype=np.float64) @ per_image
    diff_sum, gt_sum, min_sum, max_sum = (sums[:, j * k:(j + 1) * k] for j in range(4))
    return {
        "cacc": sums[:, 4 * k] / max(n, 1),
        "acd": sums[:, 4 * k + 1] / max(n, 1),
        "mccd": _ratio_means(diff_sum, gt_sum),
        "mciou": _ratio_means(min_sum, max_sum),
    }


def map_resamples(layout: cocoeval.CategoryLayout, weights: np.ndarray) -> dict[str, np.ndarray]:
    """mAP50 and mmAP of every resample (``float64[B]``, NaN where undefined), one resample at a time.

    ``weights (int[B, n_images])`` are multiplicities over the images that ``layout`` indexes.
    """
    values = np.full((2, len(weights)), np.nan)
    for b, image_weight in enumerate(weights):
        mmap, map50 = cocoeval.summarize(cocoeval.weighted_precision_table(layout, image_weight))
        values[:, b] = [np.nan if v is None else v for v in (map50, mmap)]
    return {"map50": values[0], "mmap": values[1]}


def row_resamples(pred: np.ndarray, gt: np.ndarray, indices: np.ndarray,
                  layout: cocoeval.CategoryLayout | None = None, *, chunk: int = 256) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` on every resample of one row: ``float64[B]`` each, NaN where undefined.

    ``pred``, ``gt``: the row's count matrices ``[N, K]``; ``indices (int[B, N])``: the resamples (see
    :func:`resample_indices`); ``layout``: the row's detections (:func:`rpc_metrics.cocoeval.category_layout`
    with the row's image mask), None to skip mAP. Resamples are weighted ``chunk`` at a time, which bounds the
    memory on large test sets.
    """
    values = {metric: np.full(len(indices), np.nan) for metric in METRICS}
    for start in range(0, len(indices), chunk):
        weights = multiplicities(indices[start:start + chunk])
        part = counting_resamples(pred, gt, weights)
        if layout is not None:
            part |= map_resamples(layout, weights)
        for metric, v in part.items():
            values[metric][start:start + chunk] = v
    return values


def row_intervals(pred: np.ndarray, gt: np.ndarray, *, n_boot: int, seed: int, confidence: float,
                  layout: cocoeval.CategoryLayout | None = None) -> dict[str, list[float] | None]:
    """``{metric: [lo, hi] or None}`` for one row: its ``N`` images resampled ``n_boot`` times with ``seed``."""
    if len(gt) == 0:
        return dict.fromkeys(METRICS)
    values = row_resamples(pred, gt, resample_indices(len(gt), n_boot, seed), layout)
    return {metric: percentile_interval(v, confidence) for metric, v in values.items()}


def percentile_interval(values: np.ndarray, confidence: float) -> list[float] | None:
    """``[lo, hi]``, the central ``confidence`` quantiles of the defined (not NaN) values; None if none is."""
    defined = np.asarray(values, dtype=np.float64)
    defined = defined[~np.isnan(defined)]
    if defined.size == 0:
        return None
    lo, hi = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(lo), float(hi)]


__all__ = ["METRICS", "check_bootstrap", "counting_resamples", "map_resamples", "multiplicities",
           "percentile_interval", "resample_indices", "row_intervals", "row_resamples"]
