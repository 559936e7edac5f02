"""The embedded mini world: a procedural dataset in exactly the RPC layout, deterministic by seed.

``DIR/train2019/`` exemplars (one product on a light turntable, every camera elevation x azimuth),
``DIR/val2019/`` and ``DIR/test2019/`` checkout images (a tray of products, another domain), the three
``instances_*2019.json`` files, ``DIR/pool2019/`` with ``instances_pool2019.json`` (unlabeled checkout photos, the
distillation pool a store would have: no annotations), and two folders no pipeline stage reads:
``DIR/exemplar_masks_true/`` (true exemplar masks and view metadata, to measure mask quality and pose pruning)
and ``DIR/pool_truth/`` (the pool's labels, to measure pseudo-label selection).

Two styles of checkout domain: ``gap`` (the default; :mod:`rpc_synth.checkout_camera`: a camera above the
tray, products lying, leaning and piled, an overhead lamp, a woven tray, a shop camera, each photometric
effect scaled by ``gap``) and ``legacy`` (the world of earlier releases: oblique views, the studio's light on
the products, a plain tray and a mild camera; its images are byte-identical to those releases').
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rpc_metrics.io import LEVELS, atomic_output, encode_mask, write_instances, write_json

from .baskets import LEVEL_RANGES, sample_basket
from .checkout_camera import OVERHEAD, checkout_camera, checkout_elevation, jpeg_quality, woven_tray
from .compose import cast_shadow, paste, place, transform_sprite, visible_parts
from .parallel import map_ordered
from .progress import Progress
from .skus import Sku, make_catalog
from .views import Sprite, render_view

TRUE_MASKS = "exemplar_masks_true"
POOL_TRUTH = "pool_truth"
SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "pool": 4}
STYLES = ("gap", "legacy")
# Per style: checkout px per world unit as a fraction of the image side, and the visible share a product keeps.
STYLE_DEFAULTS = {"gap": {"product_size": 0.26, "min_visible": 0.35}, "legacy": {"product_size": 0.2, "min_visible": 0.5}}
# Tray colours (BGR) of the checkout domain: darker and more saturated than the turntable.
TRAY_COLORS = ((95, 110, 125), (120, 95, 70), (70, 105, 90), (80, 80, 95))


@dataclass(frozen=True)
class DomainShift:
    """How checkout images differ from exemplars; every effect is on by default (0 turns it off)."""

    color_cast: float = 0.15  # per-channel gain drawn in [1 - c, 1 + c]
    uneven_light: float = 0.35  # darkest corner of the light gradient: 1 - u
    shadow_strength: float = 0.45  # soft shadow under each product
    blur_sigma: float = 0.8  # Gaussian blur, pixels
    noise_sigma: float = 4.0  # sensor noise, grey levels
    jpeg_quality: int = 80


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the mini world; the defaults suit a 2-core CPU demo. Every size goes up to RPC's 1815 px.

    ``product_size`` and ``min_visible`` left at None take their style's default (:data:`STYLE_DEFAULTS`).
    ``gap``, ``density``, ``lying`` and ``standing`` shape the ``gap`` style only; ``domain`` the ``legacy`` one.
    """

    seed: int = 0
    style: str = "gap"
    skus: int = 24
    lookalike_pairs: int = 4
    elevations: tuple[float, ...] = (0.0, 30.0, 60.0, 90.0)  # camera elevations of exemplars, degrees
    azimuths: int = 8  # turntable rotations per elevation (the first at 0 degrees)
    exemplar_size: int = 320  # exemplar width in px (height is 3/4 of it, as in RPC)
    checkout_size: int = 384  # checkout images are square
    val_images: int = 60
    test_images: int = 120
    pool_images: int = 240  # unlabeled checkout photos (the distillation pool)
    product_size: float | None = None  # checkout: px per world unit as a fraction of the image side
    min_visible: float | None = None  # checkout instances keep at least this fraction of their mask visible
    gap: float = 1.25  # strength of the checkout camera's photometric gap (0: the legacy camera's, 2: strong)
    density: float = 1.0  # piling: box overlap allowed 0.3 x density, products gathered towards the tray's centre
    lying: float = 0.65  # share of products lying on a side (the camera above sees a side view)
    standing: float = 0.1  # share standing (seen from the top); the rest lean on others
    domain: DomainShift = field(default_factory=DomainShift)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style should be one of {', '.join(STYLES)}, got {self.style!r}")
        for name, value in STYLE_DEFAULTS[self.style].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if not 0.02 <= self.product_size <= 0.6:
            raise ValueError(f"product_size should be in [0.02, 0.6] (a fraction of the image side), got {self.product_size}")
        if not 0.05 <= self.min_visible < 1.0:
            raise ValueError(f"min_visible should be in [0.05, 1), got {self.min_visible}")
        if not (0.0 <= self.gap <= 3.0 and 0.25 <= self.density <= 3.0):
            raise ValueError(f"gap should be in [0, 3] and density in [0.25, 3], got {self.gap} and {self.density}")
        if not (0.0 <= self.lying and 0.0 <= self.standing and self.lying + self.standing <= 1.0):
            raise ValueError(f"lying and standing should be shares summing to at most 1, got {self.lying}, {self.standing}")
        for name in ("val_images", "test_images", "pool_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} should be >= 0, got {getattr(self, name)}")
        if self.skus < 10:
            raise ValueError(f"skus should be at least 10 (hard trays hold 8-10 categories), got {self.skus}")
        for name in ("exemplar_size", "checkout_size"):
            if not 64 <= getattr(self, name) <= 4096:
                raise ValueError(f"{name} should be between 64 and 4096 px, got {getattr(self, name)}")
        if self.azimuths < 1 or not self.elevations:
            raise ValueError("need at least one elevation and one azimuth")


@functools.lru_cache(maxsize=8)
def catalog(config: WorldConfig) -> tuple[Sku, ...]:
    return tuple(make_catalog(config.skus, config.lookalike_pairs, config.seed))


def exemplar_views(config: WorldConfig) -> list[tuple[int, float, float]]:
    """(sku id, elevation, azimuth) of every exemplar, in image-id order."""
    azimuths = [360.0 * k / config.azimuths for k in range(config.azimuths)]
    return [(s.id, e, a) for s in catalog(config) for e in config.elevations for a in azimuths]


def _rng(config: WorldConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, SPLIT_CODES[split], index]))


def _low_freq(rng: np.random.Generator, shape: tuple[int, int], cells: int = 6) -> np.ndarray:
    """Smooth random field in [-1, 1] of ``shape`` (a small random grid upsampled)."""
    grid = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _turntable(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    grey = rng.uniform(205, 225)
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = (grey, grey + 3, grey + 6)
    disk = np.zeros((height, width), np.uint8)
    cv2.ellipse(disk, (width // 2, int(height * 0.62)), (int(width * 0.42), int(height * 0.3)), 0, 0, 360, 1, -1)
    canvas[disk.astype(bool)] += 12
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2
    canvas *= (1.0 - 0.12 * r2)[..., None]
    return canvas


def _place_single(canvas: np.ndarray, sprite: Sprite, rng: np.random.Generator) -> tuple[int, int]:
    h, w = sprite.alpha.shape
    H, W = canvas.shape[:2]
    x = int(np.clip(W / 2 - w / 2 + rng.uniform(-0.08, 0.08) * W, 1, W - w - 1))
    y = int(np.clip(H * 0.55 - h / 2 + rng.uniform(-0.06, 0.06) * H, 1, H - h - 1))
    return x, y


def render_exemplar(config: WorldConfig, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Exemplar ``index`` (0-based): ``image (uint8[H, W, 3])`` and its true mask ``bool[H, W]``."""
    sku_id, elevation, azimuth = exemplar_views(config)[index]
    sku = catalog(config)[sku_id - 1]
    rng = _rng(config, "train", index)
    height, width = config.exemplar_size * 3 // 4, config.exemplar_size
    sprite = render_view(sku, elevation, azimuth, px_per_unit=0.45 * height)
    canvas = _turntable(rng, height, width)
    x, y = _place_single(canvas, sprite, rng)
    labels = np.zeros((height, width), np.int32)
    paste(canvas, labels, sprite, x, y, 1)
    canvas += rng.normal(0, 1.5, size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8), labels == 1


@dataclass(frozen=True)
class _Pose:
    """How one checkout product was drawn: camera elevation and azimuth, px per unit, in-plane angle, fit scale."""

    elevation: float
    azimuth: float
    px_per_unit: float
    angle: float
    fit: float = 1.0
    overhead: bool = False  # lit by the tray's lamp (gap style) instead of the studio's key light

    def render(self, sku: Sku) -> Sprite:
        view = render_view(sku, self.elevation, self.azimuth, self.px_per_unit, OVERHEAD) if self.overhead else \
            render_view(sku, self.elevation, self.azimuth, self.px_per_unit)
        sprite = transform_sprite(view, 1.0, self.angle)
        return transform_sprite(sprite, self.fit, 0.0) if self.fit != 1.0 else sprite


def _checkout_sprites(config: WorldConfig, basket: list[int], rng: np.random.Generator, shrink: float
                      ) -> tuple[list[Sprite], list[_Pose]]:
    skus = catalog(config)
    ppu = config.product_size * config.checkout_size * shrink
    limit = 0.9 * config.checkout_size
    sprites, poses = [], []
    gap_style = config.style == "gap"
    for category_id in basket:
        if gap_style:
            elevation = checkout_elevation(rng, config.lying, config.standing)
            azimuth = rng.uniform(0, 360)
        else:
            elevation, azimuth = rng.uniform(20, 75), rng.uniform(0, 360)
        pose = _Pose(elevation, azimuth, ppu * rng.uniform(0.9, 1.1), rng.uniform(0, 360), overhead=gap_style)
        sprite = pose.render(skus[category_id - 1])
        largest = max(sprite.alpha.shape)
        if largest > limit:
            pose = dataclasses.replace(pose, fit=limit / largest)
            sprite = transform_sprite(sprite, pose.fit, 0.0)
        sprites.append(sprite)
        poses.append(pose)
    return sprites, poses


def _tray(rng: np.random.Generator, size: int) -> np.ndarray:
    color = np.array(TRAY_COLORS[int(rng.integers(len(TRAY_COLORS)))], np.float32)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = color * rng.uniform(0.9, 1.1)
    canvas *= (1.0 + 0.08 * _low_freq(rng, (size, size), 10))[..., None]
    return canvas


def _light_field(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Multiplicative light in [1 - strength, 1]: a linear gradient in a random direction plus a soft spot."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 31.0
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)
    cx, cy = rng.uniform(0.2, 0.8, size=2)
    spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.08)
    light = ramp + 0.5 * spot
    light = (light - light.min()) / max(float(light.max() - light.min()), 1e-6)
    field_ = 1.0 - strength * (1.0 - light)
    return cv2.resize(field_, (size, size), interpolation=cv2.INTER_LINEAR)


def apply_domain_shift(canvas: np.ndarray, rng: np.random.Generator, domain: DomainShift) -> np.ndarray:
    """Colour cast, uneven light, blur and noise on ``canvas (float32[H, W, 3])``; returns uint8."""
    size = canvas.shape[0]
    if domain.color_cast:
        canvas *= rng.uniform(1 - domain.color_cast, 1 + domain.color_cast, size=3).astype(np.float32)
    if domain.uneven_light:
        canvas *= _light_field(rng, size, domain.uneven_light)[..., None]
    if domain.blur_sigma:
        canvas = cv2.GaussianBlur(canvas, (0, 0), domain.blur_sigma)
    if domain.noise_sigma:
        canvas += rng.normal(0, domain.noise_sigma, size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8)


@dataclass
class _Tray:
    """A composed checkout tray before the camera's domain shift."""

    level: str
    canvas: np.ndarray  # float32[H, W, 3]
    labels: np.ndarray  # int32[H, W], k + 1 where product k is on top
    basket: list[int]
    sprites: list[Sprite]
    poses: list[_Pose]
    corners: np.ndarray
    visible: list


def _compose_checkout(config: WorldConfig, rng: np.random.Generator, index: int, split: str) -> _Tray:
    if config.style == "gap":
        return _compose_gap(config, rng, index, split)
    level = LEVELS[index % len(LEVELS)]
    size = config.checkout_size
    category_ids = [s.id for s in catalog(config)]
    shrink = 1.0
    for _attempt in range(30):
        basket = sample_basket(level, category_ids, rng)
        sprites, poses = _checkout_sprites(config, basket, rng, shrink)
        corners = place([s.alpha.shape for s in sprites], (size, size), rng, max_iou=0.2)
        canvas = _tray(rng, size)
        labels = np.zeros((size, size), np.int32)
        sigma = 0.02 * size
        offset = (round(0.012 * size), round(0.018 * size))
        for k, (sprite, (x, y)) in enumerate(zip(sprites, corners, strict=True)):
            if config.domain.shadow_strength:
                cast_shadow(canvas, sprite, x, y, offset, sigma, config.domain.shadow_strength)
            paste(canvas, labels, sprite, x, y, k + 1)
        visible = visible_parts(labels, sprites, corners, config.min_visible)
        if len(visible) == len(sprites):
            return _Tray(level, canvas, labels, basket, sprites, poses, corners, visible)
        shrink *= 0.93
    raise RuntimeError(f"could not fit a {level} tray for {split} image {index}; raise checkout_size")


def _compose_gap(config: WorldConfig, rng: np.random.Generator, index: int, split: str) -> _Tray:
    """A piled tray of the ``gap`` style: products gathered towards the centre with ``0.3 x density`` box
    overlap allowed, short soft shadows of an overhead lamp on a woven tray; redrawn (a little smaller every
    third try) until every product keeps ``min_visible`` of itself in view."""
    level = LEVELS[index % len(LEVELS)]
    size = config.checkout_size
    category_ids = [s.id for s in catalog(config)]
    shrink = 1.0
    for attempt in range(45):
        basket = sample_basket(level, category_ids, rng)
        sprites, poses = _checkout_sprites(config, basket, rng, shrink)
        corners = place([s.alpha.shape for s in sprites], (size, size), rng, max_iou=min(0.3 * config.density, 0.8),
                        spread=0.25 / math.sqrt(config.density))
        canvas = woven_tray(rng, size, config.gap)
        labels = np.zeros((size, size), np.int32)
        offset = (round(0.004 * size), round(0.008 * size))
        for k, (sprite, (x, y)) in enumerate(zip(sprites, corners, strict=True)):
            cast_shadow(canvas, sprite, x, y, offset, 0.012 * size, 0.35)
            paste(canvas, labels, sprite, x, y, k + 1)
        visible = visible_parts(labels, sprites, corners, config.min_visible)
        if len(visible) == len(sprites):
            return _Tray(level, canvas, labels, basket, sprites, poses, corners, visible)
        if attempt % 3 == 2:
            shrink *= 0.95
    raise RuntimeError(f"could not fit a {level} tray for {split} image {index}; lower density or product_size")


def render_checkout(config: WorldConfig, split: str, index: int) -> tuple[np.ndarray, str, list[dict]]:
    """Checkout image ``index`` of ``split``: ``image``, its level and annotations (no ids) with visible boxes.

    Trays whose instances end up hidden beyond ``min_visible`` are redrawn (smaller) so that every
    image respects its level's category and instance ranges exactly.
    """
    rng = _rng(config, split, index)
    tray = _compose_checkout(config, rng, index, split)
    if config.style == "gap":
        image = checkout_camera(tray.canvas, rng, config.gap, _light_field)
    else:
        image = apply_domain_shift(tray.canvas, rng, config.domain)
    annotations = []
    for v in tray.visible:
        x, y, w, h = v.bbox
        annotations.append(
            {
                "category_id": tray.basket[v.index],
                "bbox": v.bbox,
                "area": float(v.area),
                "iscrowd": 0,
                "point_xy": [x + w / 2, y + h / 2],
                "segmentation": encode_mask(v.mask),
            }
        )
    return image, tray.level, annotations


def lookalike_evidence(config: WorldConfig, split: str, index: int, contrast: float = 40.0) -> tuple[str, list[dict]]:
    """What tells each product of checkout image ``index`` from its look-alike, in the pixels the camera sees.

    Every product of a look-alike pair is drawn again as its twin in the same pose, and its visible pixels
    (not covered by products on top) are compared before the camera's effects: ``evidence_px`` counts those
    where a channel differs by more than ``contrast`` grey levels (0: the two SKUs look the same here, and no
    model can tell them apart). Returns the level and one row per annotation of :func:`render_checkout`, in its
    order: ``{"category_id", "twin" (None for SKUs without one), "evidence_px", "visible_px"}``.
    """
    skus = catalog(config)
    twin = {s.id: s.twin_of for s in skus if s.twin_of is not None}
    twin.update({b: a for a, b in twin.items()})
    tray = _compose_checkout(config, _rng(config, split, index), index, split)
    rows = []
    for v in tray.visible:
        category_id = tray.basket[v.index]
        sprite = tray.sprites[v.index]
        x, y = (int(c) for c in tray.corners[v.index])
        h, w = sprite.alpha.shape
        seen = v.mask[y : y + h, x : x + w]  # its visible pixels, in the sprite's frame
        row = {"category_id": category_id, "twin": twin.get(category_id), "evidence_px": None,
               "visible_px": int(seen.sum())}
        if row["twin"] is not None:
            other = tray.poses[v.index].render(skus[row["twin"] - 1])
            if other.alpha.shape != sprite.alpha.shape:  # same shape and size by construction; guard anyway
                raise RuntimeError(f"SKU {row['twin']} does not draw like its twin {category_id}")
            diff = np.abs(sprite.image.astype(np.int16) - other.image.astype(np.int16)).max(axis=2)
            row["evidence_px"] = int((diff[seen] > contrast).sum())
        rows.append(row)
    return tray.level, rows


def lookalike_ceiling(images: list[list[dict]], min_px: int = 10) -> float:
    """The best expected checkout accuracy on ``images`` (rows of :func:`lookalike_evidence` per image) of a model
    that names every product right unless it shows fewer than ``min_px`` pixels of evidence against its twin.

    Such products are a coin toss within their pair (the world draws either member alike), so an image with
    ``k`` of them in one pair is right at best with probability ``max_j C(k, j) / 2**k`` (guessing the most
    likely split of the counts); pairs multiply. Returns the mean over images, in [0, 1].
    """
    if not images:
        raise ValueError("no images")
    total = 0.0
    for rows in images:
        blind: dict[frozenset, int] = {}
        for r in rows:
            if r["twin"] is not None and r["evidence_px"] < min_px:
                pair = frozenset((r["category_id"], r["twin"]))
                blind[pair] = blind.get(pair, 0) + 1
        p = 1.0
        for k in blind.values():
            p *= math.comb(k, k // 2) / 2**k  # the most likely split of the counts
        total += p
    return total / len(images)


def _write_image(path: Path, image: np.ndarray, quality: int) -> None:
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), image, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0]):
            raise OSError(f"could not write {path}")


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), image, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"could not write {path}")


def exemplar_file_name(index: int) -> str:
    return f"exemplar_{index + 1:06d}.jpg"


def checkout_file_name(split: str, index: int) -> str:
    return f"{split}_{index + 1:06d}.jpg"


def checkout_jpeg_quality(config: WorldConfig) -> int:
    return jpeg_quality(config.gap) if config.style == "gap" else config.domain.jpeg_quality


def _world_task(task: tuple[WorldConfig, str, str, int]) -> dict:
    config, out, split, index = task
    out_dir = Path(out)
    if split == "train":
        image, mask = render_exemplar(config, index)
        name = exemplar_file_name(index)
        _write_image(out_dir / "train2019" / name, image, 95)
        _write_png(out_dir / TRUE_MASKS / name.replace(".jpg", ".png"), mask.astype(np.uint8) * 255)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bbox = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
        return {"file_name": name, "shape": image.shape[:2], "bbox": bbox, "true_area": int(mask.sum())}
    image, level, annotations = render_checkout(config, split, index)
    name = checkout_file_name(split, index)
    _write_image(out_dir / f"{split}2019" / name, image, checkout_jpeg_quality(config))
    return {"file_name": name, "shape": image.shape[:2], "level": level, "annotations": annotations}


def _header(config: WorldConfig) -> dict:
    skus = catalog(config)
    categories = [{"supercategory": s.supercategory, "id": s.id, "name": s.name} for s in skus]
    raw = [
        {"sku_name": f"sku_{s.id}", "category_id": s.id, "sku_class": s.supercategory, "code": f"69{s.id:011d}",
         "shelf": 1 + s.id % 4, "num": 1, "name": s.name, "clas": s.supercategory, "known": True, "ind": s.id - 1}
        for s in skus
    ]
    info = {"description": "rpc-synth mini world (procedural, RPC layout)", "year": 2019, "version": "1.0",
            "seed": config.seed}
    return {"info": info, "licenses": [], "categories": categories, "__raw_Chinese_name_df": raw}


def _assemble_exemplars(config: WorldConfig, results: list[dict]) -> tuple[dict, list[dict]]:
    images, annotations, views = [], [], []
    for i, (r, (sku_id, elevation, azimuth)) in enumerate(zip(results, exemplar_views(config), strict=True)):
        h, w = r["shape"]
        images.append({"file_name": r["file_name"], "width": int(w), "height": int(h), "id": i + 1})
        x, y, bw, bh = r["bbox"]
        annotations.append({"area": bw * bh, "bbox": r["bbox"], "category_id": sku_id, "id": i + 1, "image_id": i + 1,
                            "iscrowd": 0, "segmentation": [], "point_xy": [x + bw / 2, y + bh / 2]})
        views.append({"image_id": i + 1, "file_name": r["file_name"], "category_id": sku_id, "elevation": elevation,
                      "azimuth": azimuth, "true_area": r["true_area"]})
    return {**_header(config), "images": images, "annotations": annotations}, views


def _assemble_checkout(config: WorldConfig, results: list[dict]) -> dict:
    images, annotations = [], []
    for i, r in enumerate(results):
        h, w = r["shape"]
        images.append({"file_name": r["file_name"], "width": int(w), "height": int(h), "id": i + 1, "level": r["level"]})
        for ann in r["annotations"]:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": i + 1})
    return {**_header(config), "images": images, "annotations": annotations}


def mark_degenerate(views: list[dict], threshold: float = 0.45) -> None:
    """Add each view's true area ratio (to its SKU's largest view) and ``degenerate = ratio <= threshold``."""
    largest: dict[int, int] = {}
    for v in views:
        largest[v["category_id"]] = max(largest.get(v["category_id"], 0), v["true_area"])
    for v in views:
        v["true_ratio"] = v["true_area"] / largest[v["category_id"]]
        v["degenerate"] = v["true_ratio"] <= threshold


def build_world(out: str | Path, config: WorldConfig | None = None, *, workers: int = 1, progress: bool = True) -> dict:
    """Write the mini world under ``out``; return a summary (counts per split, settings).

    Images are written first, each atomically; the JSON files last, so an interrupted run leaves no
    ``instances_*.json`` that refers to missing images. Re-running rewrites the same bytes.
    """
    config = config or WorldConfig()
    out = Path(out)
    n_exemplars = len(exemplar_views(config))
    tasks = [(config, str(out), "train", i) for i in range(n_exemplars)]
    tasks += [(config, str(out), "val", i) for i in range(config.val_images)]
    tasks += [(config, str(out), "test", i) for i in range(config.test_images)]
    tasks += [(config, str(out), "pool", i) for i in range(config.pool_images)]
    bar = Progress(len(tasks), "rpc-synth world", enabled=progress)
    results = []
    for result in map_ordered(_world_task, tasks, workers):
        results.append(result)
        bar.update()
    train, views = _assemble_exemplars(config, results[:n_exemplars])
    mark_degenerate(views)
    ends = np.cumsum([n_exemplars, config.val_images, config.test_images, config.pool_images])
    val, test, pool = (_assemble_checkout(config, results[a:b]) for a, b in itertools.pairwise(ends))
    write_json({"views": views}, out / TRUE_MASKS / "views.json", indent=1)
    summary = world_summary(config)
    write_json(summary, out / "world.json", indent=1)
    splits = [("train", train), ("val", val), ("test", test)]
    if config.pool_images:
        write_instances(pool, out / POOL_TRUTH / "instances_pool2019.json")
        unlabeled = {**pool, "annotations": [], "images": [{k: v for k, v in im.items() if k != "level"}
                                                            for im in pool["images"]]}
        splits.append(("pool", unlabeled))
    for split, dataset in splits:
        write_instances(dataset, out / f"instances_{split}2019.json")
    return summary


def world_summary(config: WorldConfig) -> dict:
    skus = catalog(config)
    legacy = config.style == "legacy"
    shown = ("gap", "density", "lying", "standing") if legacy else ("domain",)
    return {
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in shown and k != "domain"},
        "domain_shift": dataclasses.asdict(config.domain) if legacy else {"gap": config.gap,
                                                                          "jpeg_quality": checkout_jpeg_quality(config)},
        "shapes": sorted({s.shape for s in skus}),
        "lookalike_pairs": [[s.twin_of, s.id] for s in skus if s.twin_of is not None],
        "level_ranges": {k: [list(c), list(n)] for k, (c, n) in LEVEL_RANGES.items()},
        "exemplars": len(exemplar_views(config)),
    }
