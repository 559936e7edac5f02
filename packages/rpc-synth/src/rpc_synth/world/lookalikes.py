"""How hard the mini world's look-alike pairs are: the pixels that tell each product from its twin in a checkout
image, and the best accuracy a model can reach when it cannot see those (a ceiling of cAcc)."""

from __future__ import annotations

import math

import numpy as np

from .config import WorldConfig, catalog, world_rng
from .draw import compose_checkout


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
    tray = compose_checkout(config, world_rng(config, split, index), index, split)
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
