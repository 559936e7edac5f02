"""Finding the one product in a catalogue photo: its box, from its mask (``rpc-synth catalog``).

A rough box where the photo differs from a smooth background fitted on the frame's border, then the
coarse-to-fine masks of :mod:`rpc_synth.masks` (the same as ``rpc-synth masks``) inside it, twice, and the box's
outer rows and columns kept only where their pixels are at least half product (partial pixels of an anti-aliased
edge). With ``shadows``, the product is found on a shadow-invariant image (log-chromaticity and a luminance blind
to shading) and the photo's mask loses the regions of the surface's own chroma outside it (the cast shadow).
"""

from __future__ import annotations

import cv2
import numpy as np

from .masks import exemplar_masks, fill_holes

ROUGH_PX = 128  # side of the rough search
ROUGH_MARGIN = 10.0  # Lab distance above the border's own spread that counts as product in the rough search
SHADOW_CHROMA = 0.03  # a region is shaded surface when its channels' ratios to the surface spread less (median)
INVARIANT_GAIN, INVARIANT_LUMA_GAIN = 600.0, 120.0  # grey levels per unit of log-chromaticity / log-luminance
INVARIANT_FLAT = (0.5, 1.25)  # luminance range (x the border's) that the shadow-invariant image does not see
TRIM_PASSES = 2
FULL_FRAME = 0.8  # a mask over this share of the frame is no product found (nothing around it to tell it apart)


def _mask_box(mask: np.ndarray) -> list[int] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def major_components(mask: np.ndarray, share: float = 0.2) -> np.ndarray:
    """``mask``'s connected components of at least ``share`` x the largest one's area (8-connected)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return np.isin(labels, 1 + np.nonzero(areas >= share * areas.max())[0])


def _pad(box, fraction: float, shape) -> list[float]:
    x, y, w, h = box
    p = fraction * max(w, h) + 2
    x0, y0 = max(0.0, x - p), max(0.0, y - p)
    x1, y1 = min(float(shape[1]), x + w + p), min(float(shape[0]), y + h + p)
    return [x0, y0, x1 - x0, y1 - y0]


def rough_box(image: np.ndarray) -> list[float] | None:
    """Where ``image`` differs from its background: Lab distance to a quadratic colour surface fitted on the
    frame's border, above the border's own spread + :data:`ROUGH_MARGIN`, closed; the box of the components at
    least a fifth of the largest. None when nothing stands out."""
    H, W = image.shape[:2]
    s = min(1.0, ROUGH_PX / max(H, W))
    small = cv2.resize(image, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    h, w = lab.shape[:2]
    if min(h, w) < 8:
        return None
    ring = np.ones((h, w), bool)
    b = max(2, round(0.04 * min(h, w)))
    ring[b:-b, b:-b] = False
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = xx.ravel() / w, yy.ravel() / h
    design = np.stack([np.ones(h * w), u, v, u * u, v * v, u * v], axis=1)
    values = lab.reshape(-1, 3).astype(np.float64)
    coeffs, *_ = np.linalg.lstsq(design[ring.ravel()], values[ring.ravel()], rcond=None)
    distance = np.sqrt(((values - design @ coeffs) ** 2).sum(axis=1)).reshape(h, w)
    border = distance[ring]
    median = float(np.median(border))
    noise = median + 3.0 * 1.4826 * float(np.median(np.abs(border - median)))
    fg = (distance > noise + ROUGH_MARGIN) & ~ring
    k = max(3, (round(0.04 * max(h, w)) // 2) * 2 + 1)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    box = _mask_box(major_components(fg))
    if box is None:
        return None
    return [box[0] / s, box[1] / s, box[2] / s, box[3] / s]


def _coverage(image: np.ndarray, edge: np.ndarray, outside: np.ndarray, inside: np.ndarray) -> float | None:
    """Median coverage of ``edge`` pixels between ``outside`` (background) and ``inside`` (product) neighbours:
    the projection of each edge colour on the segment from the outside colour to the inside one."""
    o, i, e = (image[idx].astype(np.float64) for idx in (outside, inside, edge))
    span = i - o
    norm = (span**2).sum(axis=1)
    ok = norm > 15.0**2  # the two neighbours must differ clearly for a coverage to mean anything
    if ok.sum() < 1:
        return None
    return float(np.median(((e - o) * span).sum(axis=1)[ok] / norm[ok]))


def _trim_partial_edges(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` without an outermost row or column of its box whose pixels are less than half product."""
    mask = mask.copy()
    for axis in (0, 1):
        view_mask = mask if axis == 0 else mask.T
        view_image = image if axis == 0 else image.transpose(1, 0, 2)
        rows = np.nonzero(view_mask.any(axis=1))[0]
        if len(rows) < 3:
            continue
        for edge, step in ((rows[0], -1), (rows[-1], 1)):
            out_row, in_row = edge + step, edge - step
            if not 0 <= out_row < view_mask.shape[0]:
                continue
            cols = np.nonzero(view_mask[edge] & view_mask[in_row])[0]
            if len(cols) == 0:
                continue
            c = _coverage(view_image, (np.full_like(cols, edge), cols), (np.full_like(cols, out_row), cols),
                          (np.full_like(cols, in_row), cols))
            if c is not None and c < 0.5:
                view_mask[edge] = False
    return mask


def shadow_invariant(image: np.ndarray) -> np.ndarray:
    """``image`` where a shade of the surface looks like the surface: log-chromaticity relative to the frame
    border's (x :data:`INVARIANT_GAIN`, two channels) and a luminance that is flat from
    :data:`INVARIANT_FLAT` times the border's brightness (shadows, vignetting, grain) and grows beyond it (dark and
    bright products stay apart), as ``uint8[H, W, 3]`` for the same mask functions."""
    logs = np.log(image.astype(np.float32) + 8.0)
    luminance = logs.mean(axis=2)
    chroma = logs - luminance[..., None]
    h, w = luminance.shape
    ring = np.ones((h, w), bool)
    b = max(2, round(0.04 * min(h, w)))
    ring[b:-b, b:-b] = False
    c0, l0 = np.median(chroma[ring], axis=0), float(np.median(luminance[ring]))
    lo, hi = np.log(INVARIANT_FLAT[0]), np.log(INVARIANT_FLAT[1])
    d = luminance - l0
    beyond = np.where(d < lo, d - lo, np.where(d > hi, d - hi, 0.0))
    out = np.stack([128 + INVARIANT_GAIN * (chroma[..., 0] - c0[0]), 128 + INVARIANT_GAIN * (chroma[..., 2] - c0[2]),
                    128 + INVARIANT_LUMA_GAIN * beyond], axis=2)
    return np.clip(out, 0, 255).astype(np.uint8)


def _fine_mask(image: np.ndarray, box, refine_px: int) -> tuple[np.ndarray | None, float]:
    """The coarse-to-fine mask inside a wide search box, then inside one hugging the first mask (as the masks
    stage sees), and its quality score; None when empty."""
    shape, score, fine = image.shape[:2], 0.0, None
    for fraction in (0.1, 0.02):
        result = exemplar_masks(image, _pad(box, fraction, shape), refine_px=refine_px)
        fine, score = result.full("fine", shape), result.score
        box = _mask_box(fine)
        if box is None:
            return None, 0.0
    return fine, score


def _without_shadow(image: np.ndarray, mask: np.ndarray, product: np.ndarray) -> np.ndarray:
    """``mask`` (the product and its shadow, from the photo) less the regions outside ``product`` (the mask of the
    shadow-invariant image, grown by 1 px) whose median channel spread of the ratio to the surface around is
    under :data:`SHADOW_CHROMA` (a multiplicative shade keeps the surface's chroma; a greyish cap does not);
    opened so that a penumbra rim cannot bridge, every major part kept, holes filled."""
    k = max(3, (round(0.06 * max(_mask_box(mask)[2:])) // 2) * 2 + 3)
    near = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)
    band = cv2.dilate(near.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~near
    if band.sum() < 16:
        return mask
    surface = np.median(image[band].astype(np.float32), axis=0) + 1.0
    spread = np.ptp((image.astype(np.float32) + 1.0) / surface, axis=2)
    candidates = mask & ~cv2.dilate(product.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    n, labels = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=8)
    inside = labels > 0
    if n > 1:  # one median per region: sort the spreads by region, split at the region sizes
        order = np.argsort(labels[inside], kind="stable")
        groups = np.split(spread[inside][order], np.cumsum(np.bincount(labels[inside])[1:])[:-1])
        shadow = np.isin(labels, 1 + np.nonzero([np.median(g) < SHADOW_CHROMA for g in groups])[0])
        mask = mask & ~shadow
    rest = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    return fill_holes(major_components(rest))


def find_product(image: np.ndarray, *, refine_px: int = 400, shadows: bool = False) -> tuple[list[float] | None, str, float]:
    """The product's box ``[x, y, w, h]`` in ``image``, a reason when there is none, and the mask's quality
    score (the IoU of the coarse and the fine mask, as ``rpc-synth masks`` reports it). ``shadows``: find the
    product on the shadow-invariant image (:func:`shadow_invariant`) and cut cast shadows off the photo's mask
    (:func:`_without_shadow`); a product of the surface's own colour is then found as without ``shadows``."""
    shape = image.shape[:2]
    invariant = shadow_invariant(image) if shadows else None
    box = rough_box(invariant) if shadows else None
    if box is None:
        shadows, box = False, rough_box(image)
    if box is None:
        return None, "no product found: nothing differs from the background", 0.0
    fine, score = _fine_mask(image, box, refine_px)
    product = _fine_mask(invariant, box, refine_px)[0] if shadows else None
    if fine is None:
        return None, "no product found: the mask is empty", 0.0
    if fine.sum() > FULL_FRAME * fine.size or _full_frame(_mask_box(fine), shape):
        return None, "no product found: the mask covers almost the whole frame (no plain surface around it?)", score
    if product is not None:
        fine = _without_shadow(image, fine | product, product)
    for _ in range(TRIM_PASSES if product is not None else 1):  # a shadow's penumbra can be two rows wide
        trimmed = _trim_partial_edges(image, fine)
        if trimmed.sum() == fine.sum():
            break
        fine = trimmed
    box = _mask_box(fine) or box
    return [float(v) for v in box], "", score


def _full_frame(box, shape) -> bool:
    return box[2] >= 0.98 * shape[1] and box[3] >= 0.98 * shape[0]
