"""The classic baseline: per-channel histogram matching of each image to the target domain (numpy only)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def channel_histograms(images: Iterable[np.ndarray]) -> np.ndarray:
    """Pixel counts per channel and value over all ``images`` (``uint8[H, W, C]``): ``int64[C, 256]``."""
    total = None
    for image in images:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"images should be uint8[H, W, C], got {image.dtype}{list(image.shape)}")
        counts = np.stack([np.bincount(image[..., c].ravel(), minlength=256) for c in range(image.shape[2])])
        if total is not None and total.shape != counts.shape:
            raise ValueError(f"images should all have {total.shape[0]} channels, got {counts.shape[0]}")
        total = counts if total is None else total + counts
    if total is None:
        raise ValueError("channel_histograms needs at least one image")
    return total


def _cdf(counts: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(counts, axis=-1).astype(np.float64)
    return cumulative / cumulative[..., -1:]


def match_histograms(image: np.ndarray, target_counts: np.ndarray) -> np.ndarray:
    """Map each channel of ``image`` so its value distribution follows ``target_counts`` (``[C, 256]``).

    Value ``v`` of a channel goes to the smallest target value whose cumulative share reaches the image's
    cumulative share at ``v``: the classic monotone lookup table, one per channel.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != target_counts.shape[0]:
        raise ValueError(f"image should be uint8[H, W, {target_counts.shape[0]}], got {image.dtype}{list(image.shape)}")
    source_cdf, target_cdf = _cdf(channel_histograms([image])), _cdf(target_counts)
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        lut = np.searchsorted(target_cdf[c], source_cdf[c] - 1e-12, side="left").clip(0, 255).astype(np.uint8)
        out[..., c] = lut[image[..., c]]
    return out
