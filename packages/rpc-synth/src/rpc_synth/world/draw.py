"""Drawing the mini world's images: an exemplar (one product on a light turntable) and a checkout tray (products
posed, placed, shadowed and pasted), seen through the style's camera. Pure functions of the config, the split
and the index: nothing is written here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from rpc_metrics.io import LEVELS, encode_mask

from ..baskets import sample_basket
from ..checkout_camera import OVERHEAD, checkout_camera, checkout_elevation, smooth_field, woven_tray
from ..compose import cast_shadow, paste, place, transform_sprite, visible_parts
from ..skus import Sku
from ..views import Sprite, render_view
from .config import DomainShift, WorldConfig, catalog, exemplar_views, world_rng

# Tray colours (BGR) of the checkout domain: darker and more saturated than the turntable.
TRAY_COLORS = ((95, 110, 125), (120, 95, 70), (70, 105, 90), (80, 80, 95))


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


def _textured_turntable(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A lightly textured surface: a warm grey with wood-like grain (warped stripes), slow blotches, fine noise
    and a stronger vignetting than the plain turntable's."""
    side = max(height, width)
    base = rng.uniform(150, 205) * np.array([0.86, 0.95, 1.04], np.float32)  # BGR: warm, as light wood
    theta, period = rng.uniform(0, np.pi), rng.uniform(5.0, 12.0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    warp = 2.5 * smooth_field(rng, side, 6)[:height, :width]
    grain = np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * (2 * np.pi / period) + warp)
    texture = 0.06 * grain + 0.05 * smooth_field(rng, side, 5)[:height, :width]
    texture += 0.02 * rng.normal(0, 1, size=(height, width)).astype(np.float32)
    r2 = ((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2
    return base * ((1.0 + texture) * (1.0 - 0.35 * r2))[..., None]


def _studio_shadow(canvas: np.ndarray, sprite: Sprite, x: int, y: int, rng: np.random.Generator) -> None:
    """The product's soft shadow on the textured turntable: offset 3-7% of the height in any direction, 30-45%
    dark."""
    height = canvas.shape[0]
    angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.07) * height
    offset = (round(length * np.cos(angle)), round(length * np.sin(angle)))
    cast_shadow(canvas, sprite, x, y, offset, rng.uniform(0.008, 0.02) * height, rng.uniform(0.3, 0.45))


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
    rng = world_rng(config, "train", index)
    height, width = config.exemplar_size * 3 // 4, config.exemplar_size
    sprite = render_view(sku, elevation, azimuth, px_per_unit=0.45 * height)
    textured = config.turntable == "textured"
    canvas = _textured_turntable(rng, height, width) if textured else _turntable(rng, height, width)
    x, y = _place_single(canvas, sprite, rng)
    if textured:
        _studio_shadow(canvas, sprite, x, y, rng)
    labels = np.zeros((height, width), np.int32)
    paste(canvas, labels, sprite, x, y, 1)
    canvas += rng.normal(0, 1.5, size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8), labels == 1



@dataclass(frozen=True)
class Pose:
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
                      ) -> tuple[list[Sprite], list[Pose]]:
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
        pose = Pose(elevation, azimuth, ppu * rng.uniform(0.9, 1.1), rng.uniform(0, 360), overhead=gap_style)
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
    canvas *= (1.0 + 0.08 * smooth_field(rng, size, 10))[..., None]
    return canvas


def light_field(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
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
        canvas *= light_field(rng, size, domain.uneven_light)[..., None]
    if domain.blur_sigma:
        canvas = cv2.GaussianBlur(canvas, (0, 0), domain.blur_sigma)
    if domain.noise_sigma:
        canvas += rng.normal(0, domain.noise_sigma, size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8)


@dataclass
class Tray:
    """A composed checkout tray before the camera's domain shift."""

    level: str
    canvas: np.ndarray  # float32[H, W, 3]
    labels: np.ndarray  # int32[H, W], k + 1 where product k is on top
    basket: list[int]
    sprites: list[Sprite]
    poses: list[Pose]
    corners: np.ndarray
    visible: list


# How each style composes a tray: attempts, the placement's overlap and spread, the products' shadow (offset and
# blur as shares of the image side, darkness; 0: none), how trays shrink on a failed try, and the hint of failure.
@dataclass(frozen=True)
class _TrayRule:
    attempts: int
    max_iou: float
    spread: float | None
    shadow: tuple[float, float, float, float]  # (x offset, y offset, sigma) x side, strength
    shrink: float
    shrink_every: int
    hint: str


def _tray_rule(config: WorldConfig) -> _TrayRule:
    if config.style == "gap":
        return _TrayRule(45, min(0.3 * config.density, 0.8), 0.25 / math.sqrt(config.density),
                         (0.004, 0.008, 0.012, 0.35), 0.95, 3, "lower density or product_size")
    return _TrayRule(30, 0.2, None, (0.012, 0.018, 0.02, config.domain.shadow_strength), 0.93, 1,
                     "raise checkout_size")


def compose_checkout(config: WorldConfig, rng: np.random.Generator, index: int, split: str) -> Tray:
    """Checkout tray ``index`` of ``split`` before the camera: a basket of its level, posed and placed, each
    product shadowed then pasted; redrawn (smaller after every ``shrink_every`` failed tries) until every product
    keeps ``min_visible`` of itself in view.

    ``gap`` style: products gathered towards the centre with ``0.3 x density`` box overlap allowed, short soft
    shadows of an overhead lamp, a woven tray. ``legacy``: spread out (box IoU <= 0.2), long studio shadows, a
    plain tray.
    """
    rule = _tray_rule(config)
    level = LEVELS[index % len(LEVELS)]
    size = config.checkout_size
    category_ids = [s.id for s in catalog(config)]
    spread = {} if rule.spread is None else {"spread": rule.spread}
    dx, dy, sigma, strength = rule.shadow
    offset = (round(dx * size), round(dy * size))
    shrink = 1.0
    for attempt in range(rule.attempts):
        basket = sample_basket(level, category_ids, rng)
        sprites, poses = _checkout_sprites(config, basket, rng, shrink)
        corners = place([s.alpha.shape for s in sprites], (size, size), rng, max_iou=rule.max_iou, **spread)
        canvas = woven_tray(rng, size, config.gap) if config.style == "gap" else _tray(rng, size)
        labels = np.zeros((size, size), np.int32)
        for k, (sprite, (x, y)) in enumerate(zip(sprites, corners, strict=True)):
            if strength:
                cast_shadow(canvas, sprite, x, y, offset, sigma * size, strength)
            paste(canvas, labels, sprite, x, y, k + 1)
        visible = visible_parts(labels, sprites, corners, config.min_visible)
        if len(visible) == len(sprites):
            return Tray(level, canvas, labels, basket, sprites, poses, corners, visible)
        if attempt % rule.shrink_every == rule.shrink_every - 1:
            shrink *= rule.shrink
    raise RuntimeError(f"could not fit a {level} tray for {split} image {index}; {rule.hint}")


def render_checkout(config: WorldConfig, split: str, index: int) -> tuple[np.ndarray, str, list[dict]]:
    """Checkout image ``index`` of ``split``: ``image``, its level and annotations (no ids) with visible boxes.

    Trays whose instances end up hidden beyond ``min_visible`` are redrawn (smaller) so that every
    image respects its level's category and instance ranges exactly.
    """
    rng = world_rng(config, split, index)
    tray = compose_checkout(config, rng, index, split)
    if config.style == "gap":
        image = checkout_camera(tray.canvas, rng, config.gap, light_field)
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

