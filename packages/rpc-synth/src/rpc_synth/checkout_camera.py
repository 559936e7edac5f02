"""The checkout domain of the mini world's default style: how a checkout photo differs from a turntable exemplar.

RPC's exemplars are studio photos of one standing product on a turntable under a key light; its checkout
images are taken from straight above a tray of piled products under the shop's lamps. This module draws that
gap, every photometric effect scaled by one ``strength`` (0: the mild camera of the ``legacy`` style, 1: the
default, 2: strong):

- geometry (:func:`checkout_elevation`): the camera looks down, so a product lying on its side shows a side
  view, one leaning on others an oblique view, one standing its top (a view pose pruning drops from synthesis);
- light on the products (:data:`OVERHEAD`): flat, frontal shading from a lamp above instead of the studio's;
- the tray (:func:`woven_tray`): a woven texture in the tray's own colour;
- the camera (:func:`checkout_camera`): a warm white balance, raised black level and darker gamma (haze),
  vignetting, an uneven field, specular glare, defocus blur, luminance and chroma noise; JPEG quality
  (:func:`jpeg_quality`) drops with the strength.
"""

from __future__ import annotations

import cv2
import numpy as np

from .views import Lighting

# An overhead lamp seen from a camera above the tray: light almost along the view axis, much ambient.
OVERHEAD = Lighting(direction=(0.15, 0.25, 1.0), ambient=0.72)
# Tray colours (BGR): a light grey, a beige, a pale blue and a dark slate, as shop trays come.
TRAY_COLORS = ((150, 155, 160), (120, 150, 175), (170, 150, 125), (85, 85, 90))


def checkout_elevation(rng: np.random.Generator, lying: float, standing: float) -> float:
    """Camera elevation (degrees, as exemplars are indexed) of one product seen from above the tray.

    With probability ``lying`` the product lies on a side (elevation 0-12: a side view), with ``standing`` it
    stands (78-90: its top), otherwise it leans on its neighbours (20-55).
    """
    u = rng.random()
    if u < lying:
        return float(rng.uniform(0.0, 12.0))
    if u < lying + standing:
        return float(rng.uniform(78.0, 90.0))
    return float(rng.uniform(20.0, 55.0))


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field, about [-1, 1], ``float32[size, size]``: a ``cells`` x ``cells`` grid of uniform draws
    upsampled (cubic)."""
    grid = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def woven_tray(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A ``float32[size, size, 3]`` tray: one of :data:`TRAY_COLORS`, a woven pattern of period 10-16 px whose
    contrast grows with ``strength``, fine grain and a slow variation of the material."""
    color = np.array(TRAY_COLORS[int(rng.integers(len(TRAY_COLORS)))], np.float32) * rng.uniform(0.9, 1.1)
    period = rng.uniform(10.0, 16.0)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (np.cos(theta) * xx + np.sin(theta) * yy) * (2 * np.pi / period)
    v = (-np.sin(theta) * xx + np.cos(theta) * yy) * (2 * np.pi / period)
    # Over-under weave: threads along u on one checker cell, along v on the next.
    checker = np.sign(np.sin(u / 2) * np.sin(v / 2))
    weave = np.where(checker > 0, np.abs(np.sin(u)), np.abs(np.sin(v))) - 0.6
    grain = rng.normal(0, 1, size=(size, size)).astype(np.float32)
    texture = 0.10 * strength * weave + 0.03 * grain + 0.06 * smooth_field(rng, size, 8)
    return color * (1.0 + texture)[..., None]


def _glare(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Additive specular highlights: a few soft, elongated bright spots (grey levels, float32[size, size])."""
    out = np.zeros((size, size), np.float32)
    for _ in range(int(rng.poisson(1.5 * strength))):
        spot = np.zeros((size, size), np.float32)
        centre = (int(rng.integers(size)), int(rng.integers(size)))
        axes = (int(rng.uniform(0.02, 0.07) * size), int(rng.uniform(0.01, 0.03) * size))
        cv2.ellipse(spot, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        out += cv2.GaussianBlur(spot, (0, 0), max(axes[1], 1) * 0.8) * rng.uniform(60, 140) * strength
    return out


def _vignette(size: int, amount: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    return 1.0 - amount * (xx**2 + yy**2) / 0.5


def checkout_camera(canvas: np.ndarray, rng: np.random.Generator, strength: float, light_field) -> np.ndarray:
    """The shop camera on a composed tray ``canvas (float32[H, W, 3])`` (H == W); returns uint8.

    ``light_field(rng, size, amount)`` draws the uneven illumination (the world's own, shared with the legacy
    style). Every effect is drawn even at strength 0, so one seed gives the same layout at every strength.
    """
    size = canvas.shape[0]
    warm = np.array([1 - 0.20 * strength, 1 - 0.02 * strength, 1 + 0.12 * strength], np.float32)
    canvas *= warm * rng.uniform(1 - 0.06 * strength, 1 + 0.06 * strength, size=3).astype(np.float32)
    canvas *= (light_field(rng, size, 0.35 + 0.15 * strength) * _vignette(size, 0.35 * strength))[..., None]
    canvas += _glare(rng, size, strength)[..., None]
    lift, gamma = 0.10 * strength, 1.0 + 0.25 * strength
    canvas = 255.0 * (lift + (1.0 - lift) * np.clip(canvas / 255.0, 0, 1) ** gamma)
    canvas = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), 0.8 + 0.8 * strength)
    noise = rng.normal(0, 4.0 + 4.0 * strength, size=canvas.shape[:2]).astype(np.float32)[..., None]
    noise = noise + rng.normal(0, 2.0 * strength, size=canvas.shape).astype(np.float32)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8)


def jpeg_quality(strength: float) -> int:
    """JPEG quality of the checkout photos: 80 at strength 0, 55 at 1, 30 at 2 (never under 20)."""
    return int(max(20, round(80 - 25 * strength)))
