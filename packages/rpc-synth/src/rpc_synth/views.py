"""Orthographic rendering of a SKU from a camera elevation and a turntable azimuth.

Every shape is a stack of prisms standing on the turntable (y up): a box or a flat bag is a 4-sided prism,
a can a 24-sided one, a bottle a body prism with a narrow neck on top. Each visible side face is an affine
warp of a slice of the label texture; faces are shaded by a fixed light. Rendering happens at 2x and is
reduced with area averaging, so edges are anti-aliased; the true mask is the reduced coverage > 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .skus import Sku, label_texture

ROUND_SIDES = 24
SUPERSAMPLE = 2


@dataclass
class Sprite:
    """A product cut-out: ``image (uint8[H, W, 3])`` BGR and ``alpha (float32[H, W])`` coverage in [0, 1]."""

    image: np.ndarray
    alpha: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.alpha > 0.5


@dataclass(frozen=True)
class _Prism:
    base: np.ndarray  # float[N, 2] (x, z), running left to right across the front (+z) face
    y0: float
    y1: float
    textures: tuple[np.ndarray, ...]  # one per side face, or one wrapped around all faces
    top_color: tuple[int, int, int]
    top_texture: np.ndarray | None = None


def _polygon(n: int, rx: float, rz: float) -> np.ndarray:
    t = (np.arange(n) + 0.5) * 2 * np.pi / n
    return np.stack([rx * np.cos(t), -rz * np.sin(t)], axis=1)


def _box_prism(w: float, d: float, h: float, sku: Sku) -> _Prism:
    base = np.array([[-w / 2, d / 2], [w / 2, d / 2], [w / 2, -d / 2], [-w / 2, -d / 2]])
    front = label_texture(sku, h / w)
    side = cv2.resize(label_texture(sku, h / max(d, 0.05))[:, : max(8, int(128 * 0.35))], (32, 64))
    top = cv2.resize(label_texture(sku, d / w), (64, 64))
    # Faces follow base edges: front (+z), right (+x), back (-z), left (-x).
    return _Prism(base, 0.0, h, (front, side, front, side), sku.cap, top)


def _prisms(sku: Sku) -> list[_Prism]:
    w, d, h = sku.dims
    if sku.shape in ("box", "bag"):
        return [_box_prism(w, d, h, sku)]
    if sku.shape == "can":
        label = label_texture(sku, h / (np.pi * w))
        return [_Prism(_polygon(ROUND_SIDES, w / 2, d / 2), 0.0, h, (label,), sku.cap)]
    # bottle: body (two thirds of the height) and a neck.
    body_h = 0.68 * h
    label = label_texture(sku, body_h / (np.pi * w))
    neck = np.empty((16, 16, 3), np.uint8)
    neck[:] = sku.cap
    return [
        _Prism(_polygon(ROUND_SIDES, w / 2, d / 2), 0.0, body_h, (label,), sku.base),
        _Prism(_polygon(12, w / 5, d / 5), body_h, h, (neck,), sku.cap),
    ]


def _project(points: np.ndarray, elevation: float, azimuth: float) -> tuple[np.ndarray, np.ndarray]:
    """3D points ``[N, 3]`` (x, y, z) -> screen ``[N, 2]`` (u right, v up) and the rotation to camera space."""
    a, e = np.radians(azimuth), np.radians(elevation)
    rot_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    rot = rot_x @ rot_y
    cam = points @ rot.T
    return cam[:, :2], rot


@dataclass(frozen=True)
class Lighting:
    """A directional light in camera space plus ambient: a face's shade is ``ambient + (1 - ambient) * max(0, n.l)``."""

    direction: tuple[float, float, float] = (0.45, 0.65, 0.6)
    ambient: float = 0.5

    def shade(self, normal_cam: np.ndarray) -> float:
        light = np.asarray(self.direction) / np.linalg.norm(self.direction)
        return float(self.ambient + (1.0 - self.ambient) * max(0.0, float(normal_cam @ light)))


STUDIO = Lighting()  # the turntable's: a key light from the upper front


def _warp_face(canvas: np.ndarray, cover: np.ndarray, texture: np.ndarray, quad: np.ndarray, shade: float) -> None:
    """Warp ``texture`` onto the parallelogram ``quad`` (tl, tr, br, bl in pixels) of ``canvas``."""
    x0, y0 = np.floor(quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, canvas.shape[1]), min(y1, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    th, tw = texture.shape[:2]
    src = np.float32([[0, 0], [tw, 0], [0, th]])
    dst = np.float32([quad[0], quad[1], quad[3]]) - np.float32([x0, y0])
    matrix = cv2.getAffineTransform(src, dst)
    roi = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(texture, matrix, roi, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    poly = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillConvexPoly(poly, np.round((quad - [x0, y0]) * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    inside = poly.astype(bool)
    region = canvas[y0:y1, x0:x1]
    region[inside] = np.clip(warped[inside] * shade, 0, 255)
    cover[y0:y1, x0:x1] |= inside


def _draw_prism(canvas, cover, prism: _Prism, to_px, elevation: float, azimuth: float, lighting: Lighting) -> None:
    n = len(prism.base)
    bottom = np.column_stack([prism.base[:, 0], np.full(n, prism.y0), prism.base[:, 1]])
    top = bottom.copy()
    top[:, 1] = prism.y1
    screen_bottom, rot = _project(bottom, elevation, azimuth)
    screen_top, _ = _project(top, elevation, azimuth)
    px_bottom, px_top = to_px(screen_bottom), to_px(screen_top)
    for i in range(n):
        j = (i + 1) % n
        edge = prism.base[j] - prism.base[i]
        normal = np.array([-edge[1], 0.0, edge[0]])  # outward: the base runs left to right across the front
        normal_cam = rot @ (normal / np.linalg.norm(normal))
        if normal_cam[2] <= 1e-6:
            continue
        if len(prism.textures) == 1:  # wrapped label: this face shows slice i of n
            tex = prism.textures[0]
            c0, c1 = i * tex.shape[1] // n, max((i + 1) * tex.shape[1] // n, i * tex.shape[1] // n + 1)
            tex = tex[:, c0:c1]
        else:
            tex = prism.textures[i]
        quad = np.array([px_top[i], px_top[j], px_bottom[j], px_bottom[i]])
        _warp_face(canvas, cover, tex, quad, lighting.shade(normal_cam))
    top_normal = rot @ np.array([0.0, 1.0, 0.0])
    if top_normal[2] > 1e-6:
        shade = lighting.shade(top_normal)
        if prism.top_texture is not None and n == 4:
            _warp_face(canvas, cover, prism.top_texture, px_top[[3, 2, 1, 0]], shade)
        else:
            pts = np.round(px_top * 16).astype(np.int32)
            poly = np.zeros(cover.shape, np.uint8)
            cv2.fillPoly(poly, [pts], 1, cv2.LINE_8, 4)
            inside = poly.astype(bool)
            canvas[inside] = np.clip(np.array(prism.top_color) * shade, 0, 255)
            inner = px_top.mean(axis=0) + (px_top - px_top.mean(axis=0)) * 0.75
            ring = np.clip(np.array(prism.top_color) * shade * 0.7, 0, 255)
            cv2.polylines(canvas, [np.round(inner * 16).astype(np.int32)], True, ring.tolist(), 2 * SUPERSAMPLE,
                          cv2.LINE_AA, 4)
            cover |= inside


def render_view(sku: Sku, elevation: float, azimuth: float, px_per_unit: float, lighting: Lighting = STUDIO) -> Sprite:
    """Render ``sku`` seen from ``elevation`` (0 = side, 90 = top) and ``azimuth`` degrees, ``px_per_unit`` px/unit,
    faces shaded by ``lighting``.

    Returns a tight :class:`Sprite` (1 px transparent border).
    """
    prisms = _prisms(sku)
    corners = np.concatenate(
        [np.column_stack([np.tile(p.base[:, 0], 2), np.repeat([p.y0, p.y1], len(p.base)), np.tile(p.base[:, 1], 2)])
         for p in prisms]
    )
    screen, _ = _project(corners, elevation, azimuth)
    s = px_per_unit * SUPERSAMPLE
    lo, hi = screen.min(axis=0), screen.max(axis=0)
    pad = 2 * SUPERSAMPLE
    width = int(np.ceil((hi[0] - lo[0]) * s)) + 2 * pad
    height = int(np.ceil((hi[1] - lo[1]) * s)) + 2 * pad
    width += (-width) % SUPERSAMPLE
    height += (-height) % SUPERSAMPLE

    def to_px(uv: np.ndarray) -> np.ndarray:
        return np.column_stack([(uv[:, 0] - lo[0]) * s + pad, (hi[1] - uv[:, 1]) * s + pad])

    canvas = np.zeros((height, width, 3), np.uint8)
    cover = np.zeros((height, width), bool)
    for prism in prisms:
        _draw_prism(canvas, cover, prism, to_px, elevation, azimuth, lighting)
    size = (width // SUPERSAMPLE, height // SUPERSAMPLE)
    alpha = cv2.resize(cover.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    # Average colour over covered samples only, so edges do not darken towards the black canvas.
    premult = cv2.resize(canvas.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    image = np.clip(premult / np.maximum(alpha, 1e-3)[..., None], 0, 255).astype(np.uint8)
    image[alpha <= 0] = 0
    return Sprite(image, alpha)
