"""Composition of product cut-outs onto a background: transform, placement, shadows, occlusion, visible parts.

Shared by the mini world's checkout images and by ``generate``. All work is local to each object's
region (no full-image pass per object), placement tests many candidate positions at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .views import Sprite


def transform_sprite(sprite: Sprite, scale: float, angle: float) -> Sprite:
    """Scale ``sprite`` by ``scale`` and rotate it by ``angle`` degrees about its centre, on an enlarged canvas.

    Colours are warped premultiplied by alpha so edges never pick up the colour outside the mask.
    """
    h, w = sprite.alpha.shape
    centre = (w / 2, h / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w = max(1, int(np.ceil(w * cos + h * sin)) + 2)
    new_h = max(1, int(np.ceil(w * sin + h * cos)) + 2)
    matrix[0, 2] += new_w / 2 - centre[0]
    matrix[1, 2] += new_h / 2 - centre[1]
    alpha = sprite.alpha.astype(np.float32)
    premult = sprite.image.astype(np.float32) * alpha[..., None]
    size = (new_w, new_h)
    warped_alpha = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0)
    warped = cv2.warpAffine(premult, matrix, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    image = np.clip(warped / np.maximum(warped_alpha, 1e-3)[..., None], 0, 255).astype(np.uint8)
    return trim(Sprite(image, np.clip(warped_alpha, 0, 1)))


def squash_sprite(sprite: Sprite, factor: float, axis: str = "y") -> Sprite:
    """Shrink ``sprite`` along ``axis`` (``"y"``: rows, ``"x"``: columns) by ``factor`` in (0, 1], colours
    premultiplied by alpha.

    An exemplar shows its product standing, seen from the camera's elevation: a steeper camera foreshortens it
    along the image's y axis (a flat pack's face, a bottle's body), a turn about its own axis along x. The random
    rotation that follows in composition turns the axis with the product.
    """
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"squash factor should be in (0, 1], got {factor}")
    if axis not in ("x", "y"):
        raise ValueError(f"squash axis should be 'x' or 'y', got {axis!r}")
    if factor == 1.0:
        return sprite
    h, w = sprite.alpha.shape
    new_w, new_h = (max(1, round(w * factor)), h) if axis == "x" else (w, max(1, round(h * factor)))
    alpha = sprite.alpha.astype(np.float32)
    premult = sprite.image.astype(np.float32) * alpha[..., None]
    small_alpha = cv2.resize(alpha, (new_w, new_h), interpolation=cv2.INTER_AREA)
    small = cv2.resize(premult, (new_w, new_h), interpolation=cv2.INTER_AREA).reshape(new_h, new_w, -1)
    image = np.clip(small / np.maximum(small_alpha, 1e-3)[..., None], 0, 255).astype(np.uint8)
    return Sprite(image, np.clip(small_alpha, 0, 1))


def trim(sprite: Sprite) -> Sprite:
    """Crop ``sprite`` to its non-zero alpha (plus 1 px)."""
    rows = np.flatnonzero(sprite.alpha.max(axis=1) > 0.02)
    cols = np.flatnonzero(sprite.alpha.max(axis=0) > 0.02)
    if len(rows) == 0:
        return sprite
    y0, y1 = max(rows[0] - 1, 0), rows[-1] + 2
    x0, x1 = max(cols[0] - 1, 0), cols[-1] + 2
    return Sprite(sprite.image[y0:y1, x0:x1], sprite.alpha[y0:y1, x0:x1])


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of ``box (float[M, 4])`` candidates against ``boxes (float[N, 4])``, all (x1, y1, x2, y2): ``[M, N]``."""
    lt = np.maximum(box[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(box[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(box[:, 2:] - box[:, :2], axis=1)
    area_b = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def place(
    sizes: list[tuple[int, int]],
    canvas_hw: tuple[int, int],
    rng: np.random.Generator,
    *,
    max_iou: float = 0.2,
    candidates: int = 48,
    relax_step: float = 0.1,
    spread: float | None = None,
) -> np.ndarray:
    """Top-left corners ``int[N, 2]`` (x, y) for objects of ``sizes`` (h, w), each fully inside the canvas.

    Each object takes the first of ``candidates`` random positions whose box IoU with every placed box is at
    most ``max_iou``; when none qualifies (a crowded tray) the limit is raised by ``relax_step`` and it tries again.
    Positions are uniform over the canvas, or with ``spread`` normal around its centre with that standard
    deviation (a fraction of the side): products piled towards the middle of a tray.
    """
    height, width = canvas_hw
    placed = np.zeros((0, 4))
    corners = np.zeros((len(sizes), 2), np.int64)
    for k, (h, w) in enumerate(sizes):
        limit = max_iou
        while True:
            if spread is None:
                xs = rng.integers(0, max(width - w, 0) + 1, size=candidates)
                ys = rng.integers(0, max(height - h, 0) + 1, size=candidates)
            else:
                xs, ys = (_centred(rng, side, extent, spread, candidates) for side, extent in ((width, w), (height, h)))
            cand = np.column_stack([xs, ys, xs + w, ys + h]).astype(np.float64)
            ok = np.ones(candidates, bool) if len(placed) == 0 else (box_iou(cand, placed) <= limit).all(axis=1)
            if ok.any():
                i = int(np.argmax(ok))
                break
            limit += relax_step
        corners[k] = (xs[i], ys[i])
        placed = np.vstack([placed, cand[i : i + 1]])
    return corners


def _centred(rng: np.random.Generator, side: int, extent: int, spread: float, n: int) -> np.ndarray:
    """``n`` corner coordinates whose object centres are normal around the canvas centre, kept inside."""
    centres = rng.normal(side / 2, spread * side, size=n)
    return np.clip(np.round(centres - extent / 2), 0, max(side - extent, 0)).astype(np.int64)


def cast_shadow(canvas: np.ndarray, sprite: Sprite, x: int, y: int, offset: tuple[int, int], sigma: float, strength: float) -> None:
    """Darken ``canvas (float32[H, W, 3])`` under a blurred, offset copy of the sprite's alpha (in place)."""
    h, w = sprite.alpha.shape
    pad = int(np.ceil(3 * sigma)) + max(abs(offset[0]), abs(offset[1]))
    H, W = canvas.shape[:2]
    x0, y0 = max(x - pad, 0), max(y - pad, 0)
    x1, y1 = min(x + w + pad, W), min(y + h + pad, H)
    local = np.zeros((y1 - y0, x1 - x0), np.float32)
    sx, sy = x - x0 + offset[0], y - y0 + offset[1]
    # Paste the alpha at the shifted position, clipped to the local window.
    ax0, ay0 = max(0, -sx), max(0, -sy)
    bx0, by0 = max(sx, 0), max(sy, 0)
    bw = min(w - ax0, local.shape[1] - bx0)
    bh = min(h - ay0, local.shape[0] - by0)
    if bw <= 0 or bh <= 0:
        return
    local[by0 : by0 + bh, bx0 : bx0 + bw] = sprite.alpha[ay0 : ay0 + bh, ax0 : ax0 + bw]
    shadow = cv2.GaussianBlur(local, (0, 0), sigma)
    canvas[y0:y1, x0:x1] *= (1.0 - strength * shadow)[..., None]


def paste(canvas: np.ndarray, labels: np.ndarray, sprite: Sprite, x: int, y: int, label: int) -> None:
    """Alpha-blend ``sprite`` at (x, y) onto ``canvas (float32[H, W, 3])``; mark its pixels in ``labels`` (in place)."""
    h, w = sprite.alpha.shape
    region = canvas[y : y + h, x : x + w]
    a = sprite.alpha[..., None]
    region *= 1.0 - a
    region += sprite.image.astype(np.float32) * a
    labels[y : y + h, x : x + w][sprite.mask] = label


@dataclass
class Visible:
    """The visible part of a pasted object: ``bbox`` [x, y, w, h] (pixels), ``area``, ``mask`` bool[H, W]."""

    index: int
    bbox: list[float]
    area: int
    fraction: float
    mask: np.ndarray


def visible_parts(
    labels: np.ndarray, sprites: list[Sprite], corners: np.ndarray, min_visible: float
) -> list[Visible]:
    """The objects that keep at least ``min_visible`` of their mask visible after later ones were pasted.

    ``labels (int32[H, W])`` holds k + 1 where object k is on top. Boxes are tight around the visible pixels.
    """
    out = []
    for k, (sprite, (x, y)) in enumerate(zip(sprites, corners, strict=True)):
        h, w = sprite.alpha.shape
        own = sprite.mask
        local = labels[y : y + h, x : x + w] == k + 1
        area = int(local.sum())
        total = int(own.sum())
        if total == 0 or area / total < min_visible or area == 0:
            continue
        rows = np.flatnonzero(local.any(axis=1))
        cols = np.flatnonzero(local.any(axis=0))
        bbox = [float(x + cols[0]), float(y + rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
        mask = np.zeros(labels.shape, bool)
        mask[y : y + h, x : x + w] = local
        out.append(Visible(k, bbox, area, area / total, mask))
    return out
