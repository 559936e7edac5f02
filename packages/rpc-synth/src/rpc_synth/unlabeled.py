"""Product size and products per tray estimated from unlabeled checkout photos (no boxes).

Per image, at a working resolution of at most ``work_px``: the tray is the dominant chromaticity; a smooth
background image is fitted to the tray pixels (normalized convolution, so uneven light, vignetting and tray clouds
are followed) and every pixel's colour distance to it is taken *along* the background colour only where it is
beyond shadow depth or light-spot brightness (a shadow darkens the tray to no less than ``shadow``; tray texture
and light spots brighten it by less than ``bright``) and *across* it (chromatic difference) always. Foreground =
distance above a noise threshold (``noise_factor`` x the mode of the tray's distances), holes filled, the soft
rim that blur and JPEG chroma leave around products peeled off (pixels below ``rim`` x the nearby maximum,
reachable from outside), specks and faint components (never ``strong`` x the threshold) dropped. Touching
products are split at the necks of the distance transform (each pixel goes to its geodesically nearest peak).

From the components of all images: fragments (under a tenth of the area-weighted median component) are dropped,
the single-product area is the median of the components up to 3 times it (iterated: piles merge into larger
blobs), the product size is the median sqrt(box w * h) / image side of those components, and each image holds
its foreground area / the single-product area products.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rpc_metrics.io import FormatError

from .generate import InputError
from .image_files import folder_images, read_image
from .stats import POOLED


@dataclass(frozen=True)
class Segmenter:
    """Settings of the tray/product segmentation (fractions are of the working image side)."""

    work_px: int = 512  # largest side the segmentation works at
    blur: float = 1.5  # px, against sensor noise and JPEG blocks
    background_sigma: float = 0.03  # smoothness of the background model
    noise_factor: float = 5.0  # threshold = this x the mode of the tray's colour distances
    shadow: float = 0.5  # a tray darkened to no less than this is shadow, not product
    bright: float = 1.15  # a tray brightened by less than this is texture or a light spot
    rim: float = 0.3  # a product's edge lies where the distance falls below this x the nearby maximum
    rim_depth: float = 0.015  # deepest rim peeled
    min_side: float = 0.03  # smaller components are specks
    strong: float = 3.0  # a product exceeds this x the threshold somewhere (its 90th percentile)
    split_height: float = 0.35  # touching products split where the distance transform dips this much


# ------------------------------------------------------------------------------------ one image


def _smooth(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Normalized convolution: the Gaussian-weighted mean of ``values`` over the pixels where ``weight`` is 1."""
    w = cv2.GaussianBlur(weight, (0, 0), sigma) + 1e-6
    return cv2.GaussianBlur(values * weight[..., None], (0, 0), sigma) / w[..., None]


def _mode(values: np.ndarray, top: float, bins: int = 128) -> float:
    counts, edges = np.histogram(values, bins=bins, range=(0.0, top))
    counts = np.convolve(counts, np.ones(5) / 5, mode="same")
    i = int(np.argmax(counts))
    return float(edges[i] + edges[i + 1]) / 2


def tray_seed(image: np.ndarray) -> np.ndarray:
    """Pixels of the dominant chromaticity (r, g) = (R, G) / (R + G + B) of ``image (float32[H, W, 3] BGR)``:
    a first guess of the tray that ignores brightness, so uneven light does not split it. ``bool[H, W]``."""
    total = image.sum(axis=2) + 1e-3
    r, g = image[..., 2] / total, image[..., 1] / total
    hist, r_edges, g_edges = np.histogram2d(r.ravel(), g.ravel(), bins=64, range=((0, 1), (0, 1)))
    hist = cv2.GaussianBlur(hist.astype(np.float32), (0, 0), 1.0)
    i, j = np.unravel_index(int(np.argmax(hist)), hist.shape)
    dist = np.hypot(r - (r_edges[i] + r_edges[i + 1]) / 2, g - (g_edges[j] + g_edges[j + 1]) / 2)
    return dist < max(0.03, 3 * _mode(dist, 0.2))


def colour_distance(image: np.ndarray, background: np.ndarray, seg: Segmenter) -> np.ndarray:
    """Distance of each pixel of ``image`` to ``background`` (float32[H, W, 3]), blind to shading within
    [``seg.shadow``, ``seg.bright``]: the part across the background colour plus the shading beyond that range."""
    bb = (background * background).sum(axis=2) + 1e-3
    shading = (image * background).sum(axis=2) / bb
    across = np.linalg.norm(image - shading[..., None] * background, axis=2)
    beyond = np.maximum(shading - seg.bright, 0) + np.maximum(seg.shadow - shading, 0)
    return np.hypot(across, beyond * np.sqrt(bb))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    n, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    hole = np.ones(n, bool)
    hole[border] = False
    hole[0] = False
    return mask | hole[labels]


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def foreground(image: np.ndarray, seg: Segmenter = Segmenter()) -> np.ndarray:
    """Products (``bool[h, w]``) of the BGR ``image (uint8[H, W, 3])`` at the working resolution (largest side at
    most ``seg.work_px``)."""
    h, w = image.shape[:2]
    scale = min(1.0, seg.work_px / max(h, w))
    small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else image
    pixels = cv2.GaussianBlur(small, (0, 0), seg.blur).astype(np.float32)
    side = max(pixels.shape[:2])
    tray = tray_seed(pixels).astype(np.float32)
    for _ in range(5):  # refit the background to the tray, re-find the tray
        dist = colour_distance(pixels, _smooth(pixels, tray, seg.background_sigma * side), seg)
        on_tray = dist[tray > 0] if tray.any() else dist.ravel()
        threshold = seg.noise_factor * max(_mode(on_tray, float(np.percentile(on_tray, 99)) + 1e-3), 0.5)
        product = dist > threshold
        tray = (~cv2.dilate(product.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)).astype(np.float32)
    product = _fill_holes(cv2.morphologyEx(product.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0)
    product &= ~_rim(dist, product, seg, side)
    radius = max(1, round(0.006 * side))
    product = cv2.morphologyEx(product.astype(np.uint8), cv2.MORPH_OPEN, _disk(radius))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(product, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= (seg.min_side * side) ** 2
    keep[0] = False
    for i in np.flatnonzero(keep):
        keep[i] = np.percentile(dist[labels == i], 90) >= seg.strong * threshold
    return keep[labels]


def _rim(dist: np.ndarray, product: np.ndarray, seg: Segmenter, side: int) -> np.ndarray:
    """The soft outer layer of ``product``: pixels below ``seg.rim`` x the largest distance within 1.5 % of the
    side, reachable from outside through such pixels, at most ``seg.rim_depth`` deep."""
    nearby = cv2.dilate(dist, _disk(max(2, round(0.015 * side))))
    weak = product & (dist < seg.rim * nearby)
    outside = (~product).astype(np.uint8)
    passable = (~product | weak).astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    for _ in range(max(1, round(seg.rim_depth * side))):
        outside = cv2.dilate(outside, cross) & passable
    return outside.astype(bool) & product


def _reconstruct(marker: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey-level reconstruction by dilation of ``marker`` under ``mask``."""
    kernel = np.ones((3, 3), np.uint8)
    while True:
        grown = np.minimum(cv2.dilate(marker, kernel), mask)
        if np.array_equal(grown, marker):
            return marker
        marker = grown


def split_touching(mask: np.ndarray, height: float = 0.35) -> np.ndarray:
    """Label image (``int32[H, W]``, 0 = background) of ``mask`` with touching convex objects apart.

    A peak of the distance transform is an object when it stands at least ``height`` (relative) above its saddle
    to a higher one; every pixel of ``mask`` goes to the peak it is geodesically nearest to (grown one pixel at a
    time inside the mask), so two touching products part at their neck.
    """
    dt = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    log_dt = np.log1p(dt).astype(np.float32)
    h = float(-np.log(1 - height))
    peaks = (log_dt - _reconstruct(np.maximum(log_dt - h, 0), log_dt) >= h - 1e-4) & mask
    _, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    labels = markers.astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    while True:
        grown = cv2.dilate(labels, kernel)
        fill = mask & (labels == 0) & (grown > 0)
        if not fill.any():
            return labels.astype(np.int32)
        labels[fill] = grown[fill]


def components(image: np.ndarray, seg: Segmenter = Segmenter()) -> np.ndarray:
    """Products found in ``image``: ``float[K, 2]`` of (sqrt(box w * h), area), both as fractions of the image
    side (area: of its square)."""
    mask = foreground(image, seg)
    labels = split_touching(mask, seg.split_height)
    side = float(np.sqrt(mask.shape[0] * mask.shape[1]))
    n = int(labels.max()) + 1
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    area = np.bincount(ids, minlength=n)[1:]
    if not len(area):
        return np.zeros((0, 2))
    x0 = np.full(n, np.inf)
    y0 = np.full(n, np.inf)
    x1 = np.full(n, -np.inf)
    y1 = np.full(n, -np.inf)
    np.minimum.at(x0, ids, xs)
    np.minimum.at(y0, ids, ys)
    np.maximum.at(x1, ids, xs)
    np.maximum.at(y1, ids, ys)
    present = area > 0
    box = np.sqrt((x1[1:] - x0[1:] + 1) * (y1[1:] - y0[1:] + 1))[present]
    return np.column_stack([box / side, area[present] / side**2])


# ------------------------------------------------------------------------------------ a set of images


def single_product(rows: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """From ``rows (float[K, 2])``, the (size, area) of the components of every image (:func:`components`): the
    single-product area and size, which rows are whole products (not fragments) and which are single products."""
    if not len(rows):
        raise InputError("no products found in any checkout image; is the tray a uniform colour?")
    order = np.argsort(rows[:, 1])
    cumulative = np.cumsum(rows[order, 1])
    weighted_median = rows[order, 1][np.searchsorted(cumulative, cumulative[-1] / 2)]
    whole = rows[:, 1] >= weighted_median / 10
    area = float(np.median(rows[whole, 1]))
    for _ in range(20):
        single = whole & (rows[:, 1] <= 3 * area)
        new = float(np.median(rows[single, 1]))
        if new == area:
            break
        area = new
    return area, float(np.median(rows[single, 0])), whole, single


def summarize_found(found: list[np.ndarray], sides: list[float], *, source: str) -> dict:
    """Stats (the keys :func:`rpc_synth.fit.fit_generate_config` reads) from the components of each image."""
    rows = np.concatenate(found) if found else np.zeros((0, 2))
    image = np.repeat(np.arange(len(found)), [len(f) for f in found])
    area, size, whole, single = single_product(rows)
    counts = np.bincount(image[whole], weights=rows[whole, 1], minlength=len(found)) / area
    coverage = np.bincount(image, weights=rows[:, 1], minlength=len(found))
    p10, p90 = np.percentile(counts, [10, 90])
    # The pooled level's range: the 10th to 90th percentile, since single-image estimates are noisy.
    level = {"min": max(1, int(np.floor(p10))), "median": float(np.median(counts)), "max": max(1, int(np.ceil(p90)))}
    return {
        "kind": "unlabeled",
        "source": source,
        "images": len(found),
        "image_side": float(np.median(sides)),
        "product_size": {"median": size, "p10": float(np.percentile(rows[single, 0], 10)),
                         "p90": float(np.percentile(rows[single, 0], 90)), "log_spread": None, "log_spread_se": None},
        "single_product_area": area,
        "instances_per_image": {"min": float(counts.min()), "p10": float(p10), "median": float(np.median(counts)),
                                "mean": float(counts.mean()), "p90": float(p90), "max": float(counts.max())},
        "counts": counts.round(3).tolist(),
        "coverage": float(coverage.mean()),
        "max_iou": None,
        "levels": {POOLED: {"images": len(found), "instances": level, "categories": None}},
    }


def _image_paths(folder: Path, max_images: int | None) -> list[Path]:
    try:
        paths = folder_images(folder, "unlabeled checkout photos")
    except FormatError as err:
        raise InputError(str(err)) from None
    if max_images and len(paths) > max_images:  # an even spread over the sorted names, deterministic
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_images).round().astype(int)]
    return paths


def unlabeled_stats(image_folder: str | Path, *, max_images: int | None = 200, seg: Segmenter = Segmenter()) -> dict:
    """Estimate product size and products per image from a folder of unlabeled checkout photos (top view of a tray).

    Returns a stats dict like :func:`rpc_synth.stats.checkout_stats` with ``kind = "unlabeled"``: ``image_side``,
    ``product_size`` (median sqrt(box w * h) / image side of the single products found; no spread),
    ``instances_per_image`` (and ``counts``, per image in file-name order), ``coverage`` (foreground share), one pooled level
    ``"all"`` whose instances per image run from the 10th to the 90th percentile of the estimates (single images
    are noisy) and whose categories are unknown (None); ``max_iou`` is None (overlap needs boxes). Uses at most
    ``max_images`` images, evenly spread over the sorted file names.
    """
    folder = Path(image_folder)
    found, sides = [], []
    for path in _image_paths(folder, max_images):
        try:
            image = read_image(path)
        except FormatError as err:
            raise InputError(str(err)) from None
        found.append(components(image, seg))
        sides.append(float(np.sqrt(image.shape[0] * image.shape[1])))
    try:
        return summarize_found(found, sides, source=str(folder))
    except InputError as err:
        raise InputError(f"{folder}: {err}") from None
