"""The mini world's settings and what follows from them alone: :class:`WorldConfig` (sizes, style, domain gap),
its catalog of SKUs, the exemplar views, and the random stream of every image (one per split and index, so any
image can be drawn again on its own)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..skus import Sku, make_catalog

SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "pool": 4}
STYLES = ("gap", "legacy")
TURNTABLES = ("plain", "textured")  # exemplar backgrounds: RPC's plain turntable, or wood-like grain with shadows
# Per style: checkout px per world unit as a fraction of the image side, and the visible share a product keeps.
STYLE_DEFAULTS = {"gap": {"product_size": 0.26, "min_visible": 0.35}, "legacy": {"product_size": 0.2, "min_visible": 0.5}}


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
    turntable: str = "plain"  # exemplars on a plain turntable, or "textured": grain, vignetting, a cast shadow

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style should be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.turntable not in TURNTABLES:
            raise ValueError(f"turntable should be one of {', '.join(TURNTABLES)}, got {self.turntable!r}")
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
        if not 0 <= self.lookalike_pairs <= self.skus // 2:
            raise ValueError(f"lookalike_pairs (--lookalike-pairs) should be in [0, skus / 2 = {self.skus // 2}], got {self.lookalike_pairs}")
        if self.azimuths < 1 or not self.elevations:
            raise ValueError("need at least one elevation and one azimuth")


@functools.lru_cache(maxsize=8)
def catalog(config: WorldConfig) -> tuple[Sku, ...]:
    """The world's SKUs, in id order (id k at index k - 1)."""
    return tuple(make_catalog(config.skus, config.lookalike_pairs, config.seed))


def exemplar_views(config: WorldConfig) -> list[tuple[int, float, float]]:
    """(sku id, elevation, azimuth) of every exemplar, in image-id order."""
    azimuths = [360.0 * k / config.azimuths for k in range(config.azimuths)]
    return [(s.id, e, a) for s in catalog(config) for e in config.elevations for a in azimuths]


def world_rng(config: WorldConfig, split: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split`` (``train``: the exemplars): seeded by the world's seed,
    the split and the index only."""
    return np.random.default_rng(np.random.SeedSequence([config.seed, SPLIT_CODES[split], index]))
