"""Counting metrics of checkout: cAcc, ACD, mCCD, mCIoU on count matrices.

With ``P`` (predicted) and ``G`` (true) counts of shape ``[N images, K categories]``:

- cAcc  = mean_i [ sum_k |P_ik - G_ik| == 0 ]
- ACD   = mean_i sum_k |P_ik - G_ik|
- mCCD  = mean_k ( sum_i |P_ik - G_ik| / sum_i G_ik )
- mCIoU = mean_k ( sum_i min(P_ik, G_ik) / sum_i max(P_ik, G_ik) )

A category whose ratio has a zero denominator is left out of that mean; how many were left out is reported
(``undefined_mccd``, ``undefined_mciou``), so no value is ever inf or nan.

As in torchmetrics, one private ``_update`` (count matrices -> summable state) and one ``_compute``
(state -> metrics) serve both the functional :func:`counting_metrics` and :class:`CountingAccumulator`.

>>> import numpy as np
>>> m = counting_metrics(np.array([[1, 0], [2, 1]]), np.array([[1, 0], [1, 1]]))
>>> m.cacc, m.acd, round(m.mciou, 4)
(0.5, 0.5, 0.8333)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class CountingState:
    """Sums that add over images: ``n_images``, ``n_exact`` and per-category ``[K]`` totals."""

    n_images: int
    n_exact: int
    abs_diff: np.ndarray
    gt_total: np.ndarray
    pred_total: np.ndarray
    min_total: np.ndarray
    max_total: np.ndarray

    def __add__(self, other: CountingState) -> CountingState:
        return CountingState(
            self.n_images + other.n_images, self.n_exact + other.n_exact, self.abs_diff + other.abs_diff,
            self.gt_total + other.gt_total, self.pred_total + other.pred_total,
            self.min_total + other.min_total, self.max_total + other.max_total,
        )


@dataclass(frozen=True)
class CountingMetrics:
    """cAcc, ACD, mCCD, mCIoU as fractions (cAcc, mCIoU in [0, 1]); None when no category is defined."""

    cacc: float
    acd: float
    mccd: float | None
    mciou: float | None
    n_images: int
    undefined_mccd: int
    undefined_mciou: int

    def as_dict(self) -> dict:
        return asdict(self)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt counts should both be [N images, K categories], got {pred.shape} and {gt.shape}")
    if (pred < 0).any() or (gt < 0).any():
        raise ValueError("counts should be >= 0")
    return pred, gt


def _update(pred: np.ndarray, gt: np.ndarray) -> CountingState:
    """Summable state of a batch of images (count matrices ``[N, K]``)."""
    pred, gt = _check_pair(pred, gt)
    diff = np.abs(pred - gt)
    return CountingState(
        n_images=int(pred.shape[0]),
        n_exact=int(np.count_nonzero(diff.sum(axis=1) == 0)),
        abs_diff=diff.sum(axis=0),
        gt_total=gt.sum(axis=0),
        pred_total=pred.sum(axis=0),
        min_total=np.minimum(pred, gt).sum(axis=0),
        max_total=np.maximum(pred, gt).sum(axis=0),
    )


def _ratio_mean(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float | None, int]:
    defined = denominator > 0
    if not defined.any():
        return None, int(defined.size)
    return float(np.mean(numerator[defined] / denominator[defined])), int(np.count_nonzero(~defined))


def _compute(state: CountingState) -> CountingMetrics:
    """Metrics from a state; cAcc and ACD of zero images are 0."""
    n = max(state.n_images, 1)
    mccd, undefined_mccd = _ratio_mean(state.abs_diff, state.gt_total)
    mciou, undefined_mciou = _ratio_mean(state.min_total, state.max_total)
    return CountingMetrics(
        cacc=state.n_exact / n, acd=float(state.abs_diff.sum()) / n, mccd=mccd, mciou=mciou,
        n_images=state.n_images, undefined_mccd=undefined_mccd, undefined_mciou=undefined_mciou,
    )


def counting_metrics(pred_counts: np.ndarray, gt_counts: np.ndarray) -> CountingMetrics:
    """cAcc, ACD, mCCD, mCIoU of predicted vs true count matrices ``[N images, K categories]``."""
    return _compute(_update(pred_counts, gt_counts))


class CountingAccumulator:
    """Counting metrics accumulated image by image (or batch by batch), e.g. in a training loop.

    >>> acc = CountingAccumulator(num_categories=2)
    >>> acc.update([1, 0], [1, 0]); acc.update([[2, 1]], [[1, 1]])
    >>> acc.compute().cacc
    0.5
    """

    def __init__(self, num_categories: int):
        self.num_categories = num_categories
        self.reset()

    def reset(self) -> None:
        zeros = np.zeros(self.num_categories, dtype=np.float64)
        self._state = CountingState(0, 0, zeros, zeros, zeros, zeros, zeros)

    def update(self, pred_counts, gt_counts) -> None:
        """Add one image (``[K]``) or a batch (``[N, K]``) of count vectors."""
        pred, gt = np.atleast_2d(pred_counts), np.atleast_2d(gt_counts)
        if pred.shape[-1] != self.num_categories:
            raise ValueError(f"expected {self.num_categories} categories per count vector, got {pred.shape[-1]}")
        self._state = self._state + _update(pred, gt)

    def compute(self) -> CountingMetrics:
        return _compute(self._state)


def count_matrix(image_index: np.ndarray, category_index: np.ndarray, n_images: int, n_categories: int) -> np.ndarray:
    """Count matrix ``int64[n_images, n_categories]`` of objects given by their image and category indices."""
    flat = np.asarray(image_index, dtype=np.int64) * n_categories + np.asarray(category_index, dtype=np.int64)
    return np.bincount(flat, minlength=n_images * n_categories).reshape(n_images, n_categories)
