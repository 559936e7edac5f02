"""The mini world's products: a catalog of SKUs (shape, size, label design) drawn with opencv.

A SKU is pure data (:class:`Sku`); :func:`label_texture` paints its label. Look-alike pairs share shape,
size and design and differ only in a small detail (two letters and the logo colour), as real product
variants do (the same snack in two flavours).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

SHAPES = ("box", "can", "bag", "bottle")
# Supercategories group shapes the way RPC groups products (17 groups there, 4 here).
SUPERCATEGORY = {"box": "boxed_food", "can": "canned_drink", "bag": "puffed_food", "bottle": "bottled_drink"}
# (name, BGR) of label base colours; saturated or dark so that products stand out from a light turntable.
PALETTE = (
    ("red", (40, 40, 200)),
    ("orange", (30, 120, 235)),
    ("yellow", (30, 200, 225)),
    ("green", (60, 160, 50)),
    ("teal", (150, 140, 30)),
    ("blue", (190, 90, 30)),
    ("navy", (110, 40, 20)),
    ("purple", (140, 40, 120)),
    ("pink", (150, 80, 230)),
    ("brown", (40, 70, 120)),
    ("black", (35, 35, 35)),
    ("olive", (40, 120, 120)),
)
LETTERS = "ABCDEFGHKLMNPRSTUVWXYZ"
LOGO_KINDS = ("circle", "triangle", "star", "square")
TEXTURE_PX = 128  # label texture width; height follows the label's aspect ratio


@dataclass(frozen=True)
class Sku:
    """One product. ``dims`` (width, depth, height) in world units (largest side <= 1)."""

    id: int
    shape: str
    dims: tuple[float, float, float]
    color_name: str
    base: tuple[int, int, int]
    accent: tuple[int, int, int]
    cap: tuple[int, int, int]
    stripes: tuple[tuple[float, float, tuple[int, int, int]], ...]  # (centre v in [0,1], thickness, colour)
    stripe_angle: float
    logo: str
    logo_color: tuple[int, int, int]
    logo_uv: tuple[float, float]
    letters: str
    twin_of: int | None = None  # id of the SKU this one is a look-alike of

    @property
    def name(self) -> str:
        return f"{self.id}_{self.shape}_{self.color_name}"

    @property
    def supercategory(self) -> str:
        return SUPERCATEGORY[self.shape]


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def _dims(shape: str, rng: np.random.Generator) -> tuple[float, float, float]:
    size = rng.uniform(0.6, 1.0)  # per-SKU size: the largest side, in world units
    if shape == "box":
        w, d, h = 1.0, rng.uniform(0.35, 0.7), rng.uniform(0.6, 1.4)
    elif shape == "can":
        w = 1.0
        d, h = w, rng.uniform(1.8, 2.3)  # tall enough that the top view is degenerate
    elif shape == "bottle":
        w = 1.0
        d, h = w, rng.uniform(2.4, 3.0)
    else:  # bag: a flat pack, seen edge-on it is a sliver
        w, d, h = 1.0, rng.uniform(0.08, 0.16), rng.uniform(1.0, 1.5)
    scale = size / max(w, d, h)
    return (w * scale, d * scale, h * scale)


def random_sku(sku_id: int, shape: str, rng: np.random.Generator) -> Sku:
    """Draw one SKU of ``shape`` with a random label design."""
    color_index = int(rng.integers(len(PALETTE)))
    color_name, base = PALETTE[color_index]
    n_stripes = int(rng.integers(1, 4))
    stripes = tuple(
        (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.03, 0.12)), _color(rng, 0, 256)) for _ in range(n_stripes)
    )
    return Sku(
        id=sku_id,
        shape=shape,
        dims=_dims(shape, rng),
        color_name=color_name,
        base=base,
        accent=_color(rng, 0, 256),
        cap=_color(rng, 90, 220),
        stripes=stripes,
        stripe_angle=float(rng.choice([0.0, 0.0, 20.0, -30.0, 45.0])),
        logo=str(rng.choice(LOGO_KINDS)),
        logo_color=_color(rng, 0, 256),
        logo_uv=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.25, 0.45))),
        letters="".join(rng.choice(list(LETTERS), size=3)),
    )


def lookalike(original: Sku, sku_id: int, rng: np.random.Generator) -> Sku:
    """A variant of ``original`` that differs only in two letters and the logo colour."""
    letters = list(original.letters)
    for i in (0, 2):
        choices = [c for c in LETTERS if c != letters[i]]
        letters[i] = str(rng.choice(choices))
    logo_color = tuple(int(255 - v) for v in original.logo_color)
    return dataclasses.replace(original, id=sku_id, letters="".join(letters), logo_color=logo_color, twin_of=original.id)


def make_catalog(n_skus: int, n_lookalike_pairs: int, seed: int) -> list[Sku]:
    """``n_skus`` SKUs with ids 1..n, shapes in rotation, the last ``2 * pairs`` forming look-alike pairs."""
    if n_lookalike_pairs * 2 > n_skus:
        raise ValueError(f"n_lookalike_pairs should be at most n_skus / 2 = {n_skus // 2}, got {n_lookalike_pairs}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC47A]))
    skus: list[Sku] = []
    n_unique = n_skus - n_lookalike_pairs
    for i in range(n_unique):
        skus.append(random_sku(i + 1, SHAPES[i % len(SHAPES)], rng))
    for j in range(n_lookalike_pairs):
        skus.append(lookalike(skus[j], n_unique + j + 1, rng))
    return skus


def _star(cx: float, cy: float, r: float) -> np.ndarray:
    angles = np.arange(10) * np.pi / 5 - np.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _draw_logo(img: np.ndarray, sku: Sku) -> None:
    h, w = img.shape[:2]
    cx, cy, r = sku.logo_uv[0] * w, sku.logo_uv[1] * h, 0.16 * w
    color = sku.logo_color
    if sku.logo == "circle":
        cv2.circle(img, (round(cx), round(cy)), round(r), color, -1, cv2.LINE_AA)
    elif sku.logo == "square":
        cv2.rectangle(img, (round(cx - r), round(cy - r)), (round(cx + r), round(cy + r)), color, -1, cv2.LINE_AA)
    else:
        pts = _star(cx, cy, r) if sku.logo == "star" else np.array(
            [[cx, cy - r], [cx + r, cy + r * 0.8], [cx - r, cy + r * 0.8]]
        )
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA)


@lru_cache(maxsize=256)
def label_texture(sku: Sku, aspect: float) -> np.ndarray:
    """The SKU's label as ``uint8[H, TEXTURE_PX, 3]`` BGR with ``H = TEXTURE_PX * aspect`` (height / width)."""
    w = TEXTURE_PX
    h = max(8, round(w * aspect))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = sku.base
    # Stripes: rotated bands across the label.
    centre = np.array([w / 2, h / 2])
    direction = np.array([np.cos(np.radians(sku.stripe_angle)), np.sin(np.radians(sku.stripe_angle))])
    normal = np.array([-direction[1], direction[0]])
    for v, thickness, color in sku.stripes:
        offset = (v - 0.5) * h
        half = thickness * h / 2
        long = 2 * (w + h)
        c = centre + normal * offset
        quad = np.array(
            [c - direction * long - normal * half, c + direction * long - normal * half,
             c + direction * long + normal * half, c - direction * long + normal * half]
        )
        cv2.fillConvexPoly(img, np.round(quad).astype(np.int32), color, cv2.LINE_AA)
    _draw_logo(img, sku)
    # Letters: the brand name, the detail that tells look-alikes apart.
    scale = w / 75
    (tw, th), _ = cv2.getTextSize(sku.letters, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    org = (round((w - tw) / 2), round(0.78 * h + th / 2))
    plate = tuple(int(0.45 * c) for c in sku.accent)
    cv2.rectangle(img, (org[0] - 3, org[1] - th - 3), (org[0] + tw + 3, org[1] + 5), plate, -1)
    cv2.putText(img, sku.letters, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 2, cv2.LINE_AA)
    # A thin border in the accent colour.
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), sku.accent, 2)
    return img
