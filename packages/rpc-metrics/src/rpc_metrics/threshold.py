"""Score thresholds that maximize checkout accuracy (cAcc), without recounting per candidate threshold.

An image is counted exactly at threshold ``t`` (detections with ``score >= t`` count) when, for every
category, exactly ``G_ik`` of its detections score ``>= t``: ``t`` must be above the ``(G+1)``-th best score
and at most the ``G``-th best score of that category. Over all categories this is one interval
``lo_i < t <= hi_i`` per image (empty when an image has fewer detections than objects of a category), so
cAcc at any threshold is a count of intervals containing it, and the best threshold is found by one sorted
sweep over the distinct scores. The summed count error (ACD times the number of images) is a second sweep:
a detection of rank ``r`` within its image and category lowers it by one when counted if ``r < G_ik``, and
raises it by one otherwise.

``detected_only`` reproduces a quirk of the published RPC tool (rpctool 0.1.6, ``evaluate_v1``): its per-image
count table only gets an entry for an image with at least one detection scoring ``>= t``, so at each threshold
cAcc is taken over those images alone (see :func:`rpc_metrics.evaluate`'s ``compat``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CorrectIntervals:
    """Image ``i`` is counted exactly for thresholds ``lo[i] < t <= hi[i]`` (float64, may be +-inf).

    ``error_step[d]`` is what counting detection ``d`` (``scores[d] >= t``) adds to the summed count error,
    ``objects`` the error with nothing counted (the number of objects); None where unknown. ``top[i]`` is
    image ``i``'s highest detection score (-inf without detections); None where unknown.
    """

    lo: np.ndarray
    hi: np.ndarray
    scores: np.ndarray
    error_step: np.ndarray | None = None
    objects: int = 0
    top: np.ndarray | None = None

    def detected(self, threshold: float) -> np.ndarray:
        """Which images have at least one detection scoring ``>= threshold`` (bool[N])."""
        if self.top is None:
            raise ValueError("these intervals were made without each image's top score")
        return self.top >= threshold

    def cacc(self, threshold: float, *, detected_only: bool = False) -> float:
        """cAcc at ``threshold`` (0 for zero images); ``detected_only``: over the images with a detection scoring
        ``>= threshold`` only (rpctool's quirk; 0 where there is none, where rpctool stops with an error)."""
        exact = (self.lo < threshold) & (threshold <= self.hi)
        if detected_only:
            kept = self.detected(threshold)
            return float(np.count_nonzero(exact & kept)) / max(int(np.count_nonzero(kept)), 1)
        return float(np.count_nonzero(exact)) / max(len(self.lo), 1)

    def count_error(self, threshold: float) -> float:
        """Mean over images of the summed absolute count error at ``threshold`` (the ACD; 0 for zero images)."""
        if self.error_step is None:
            raise ValueError("these intervals were made without error steps")
        total = self.objects + self.error_step[self.scores >= threshold].sum()
        return float(total) / max(len(self.lo), 1)


def correct_intervals(det_image: np.ndarray, det_category: np.ndarray, det_score: np.ndarray,
                      gt_counts: np.ndarray) -> CorrectIntervals:
    """Per-image threshold intervals of exact counting.

    ``det_image``/``det_category`` index rows and columns of ``gt_counts (int[N, K])``; ``det_score``
    are the detections' scores.
    """
    n_images, n_categories = gt_counts.shape
    lo = np.full(n_images, -np.inf)
    hi = np.full(n_images, np.inf)
    det_image = np.asarray(det_image, dtype=np.int64)
    det_category = np.asarray(det_category, dtype=np.int64)
    det_score = np.asarray(det_score, dtype=np.float64)
    key = det_image * n_categories + det_category
    order = np.lexsort((-det_score, key))
    key, score, image = key[order], det_score[order], det_image[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    rank = np.arange(len(key)) - np.repeat(starts, np.diff(np.r_[starts, len(key)]))
    wanted = gt_counts.reshape(-1)[key]
    # The G-th best score bounds t from above, the (G+1)-th from below.
    np.minimum.at(hi, image[rank == wanted - 1], score[rank == wanted - 1])
    np.maximum.at(lo, image[rank == wanted], score[rank == wanted])
    n_dets = np.bincount(key, minlength=n_images * n_categories).reshape(n_images, n_categories)
    hi[(gt_counts > n_dets).any(axis=1)] = -np.inf
    error_step = np.empty(len(det_score), dtype=np.int64)
    error_step[order] = np.where(rank < wanted, -1, 1)
    top = np.full(n_images, -np.inf)
    np.maximum.at(top, det_image, det_score)
    return CorrectIntervals(lo=lo, hi=hi, scores=det_score, error_step=error_step, objects=int(gt_counts.sum()),
                            top=top)


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold, the cAcc it gives, and the interval of equivalent thresholds (lo, hi]."""

    threshold: float
    cacc: float
    interval: tuple[float, float]


def exact_search(intervals: CorrectIntervals) -> ThresholdChoice:
    """The true cAcc optimum over every threshold, in one sorted sweep.

    Thresholds between two consecutive distinct scores are equivalent; the interval with the highest cAcc
    wins (ties: the lowest summed count error, i.e. ACD, when the intervals know it; then the widest; then the
    lowest) and its midpoint is returned. On a small validation split cAcc ties are common (one image is a
    step), and the count error is the finer measure of the same goal; width alone favours the sparse high
    scores. The outer intervals are bounded
    by ``min(0, lowest score)`` and ``max(1, highest score)``; above the highest score the threshold stays
    strictly above it.
    """
    distinct = np.unique(intervals.scores)
    m = len(distinct)
    edges = np.r_[-np.inf, distinct, np.inf]

    def edge_index(values: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(distinct, values) + 1
        idx[values == -np.inf] = 0
        idx[values == np.inf] = m + 1
        return idx

    a, b = edge_index(intervals.lo), edge_index(intervals.hi)
    valid = a < b
    diff = np.zeros(m + 2, dtype=np.int64)
    np.add.at(diff, a[valid], 1)
    np.add.at(diff, b[valid], -1)
    exact_per_interval = np.cumsum(diff)[: m + 1]
    lower_bound = min(0.0, float(distinct[0])) if m else 0.0
    upper_bound = max(1.0, float(distinct[-1])) if m else 1.0
    left = np.maximum(edges[:-1], lower_bound)
    right = np.minimum(edges[1:], upper_bound)
    width = right - left
    best = np.flatnonzero(exact_per_interval == exact_per_interval.max())
    if intervals.error_step is not None and len(best) > 1:
        # Interval j counts the detections scoring >= distinct[j]: the error is a suffix sum.
        per_score = np.bincount(np.searchsorted(distinct, intervals.scores), weights=intervals.error_step,
                                minlength=m).astype(np.int64)
        errors = intervals.objects + np.r_[np.cumsum(per_score[::-1])[::-1], 0]
        best = best[errors[best] == errors[best].min()]
    best = best[width[best] == width[best].max()]
    j = int(best[0])
    threshold = (left[j] + right[j]) / 2
    if m and j == m and threshold <= distinct[-1]:
        threshold = float(np.nextafter(distinct[-1], np.inf))
    n = max(len(intervals.lo), 1)
    return ThresholdChoice(float(threshold), float(exact_per_interval[j]) / n, (float(edges[j]), float(edges[j + 1])))


def grid_search(intervals: CorrectIntervals, *, rounds: int = 4, points: int = 10,
                span: tuple[float, float] = (0.01, 0.99), keep: int = 3, detected_only: bool = False
                ) -> ThresholdChoice:
    """The published RPC tool's search: ``rounds`` grids of ``points`` thresholds over ``span``.

    Each round spans the ``keep`` best thresholds of the previous one (ties: the earlier, i.e. lower,
    threshold); the result is the best threshold of the last grid (ties: the lowest). ``detected_only``: each
    threshold's cAcc is over the images with a detection at it (:meth:`CorrectIntervals.cacc`), as in rpctool.
    """
    low, high = span
    for _ in range(rounds):
        grid = np.linspace(low, high, points)
        cacc = np.array([intervals.cacc(t, detected_only=detected_only) for t in grid])
        top = np.argsort(-cacc, kind="stable")[:keep]
        low, high = grid[top].min(), grid[top].max()
    best = int(np.argmax(cacc))
    return ThresholdChoice(float(grid[best]), float(cacc[best]), (float(grid[best]), float(grid[best])))
