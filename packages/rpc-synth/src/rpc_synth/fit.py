"""Fit the synthesis settings to the checkout images: size, products per tray, product scale and overlap.

By simulation: small probe sets are composed in memory (:func:`rpc_synth.generate.compose_image`, no files) at a
trial setting, measured with the same maths as a labelled checkout split (:mod:`rpc_synth.stats`), and the setting
corrected until the two agree. Without labels, the estimate from the photos (:mod:`rpc_synth.unlabeled`) stands in
for the split's numbers.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from rpc_metrics.io import LEVELS, load_json

from .generate import ExemplarBank, GenerateConfig, InputError, compose_image, load_bank
from .stats import ImageBoxes, checkout_stats, summarize

IOU_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# Fields of GenerateConfig that `fit` chooses (the rest stay those of the base).
FITTED_FIELDS = ("size", "levels", "ranges", "scale", "max_iou")
_MAX_HALF_WIDTH = 0.6  # relative half width of the scale range: lo = centre * (1 - w) stays well above 0


def fitted_size(image_side: float) -> int:
    """The checkout images' median side rounded to a multiple of 32 px, within [64, 4096]."""
    return int(np.clip(32 * round(image_side / 32), 64, 4096))


def fitted_ranges(levels: dict, n_categories: int) -> tuple[tuple[str, ...], str]:
    """GenerateConfig ``levels`` and ``ranges`` from per-level stats: each level's observed min..max categories and
    instances per image, kept feasible (at least 1 instance, categories within the SKUs on hand and the instances).
    Where categories are unknown (``None``: an unlabeled estimate), half the instances, rounded up.
    """
    order = {lv: i for i, lv in enumerate(LEVELS)}
    names, parts = [], []
    for name in sorted(levels, key=lambda lv: order.get(lv, len(order))):
        level = levels[name]
        n_lo = max(1, int(level["instances"]["min"]))
        n_hi = max(n_lo, int(level["instances"]["max"]))
        cats = level["categories"] or {"min": math.ceil(n_lo / 2), "max": math.ceil(n_hi / 2)}
        c_lo = int(np.clip(cats["min"], 1, min(n_categories, n_hi)))
        c_hi = int(np.clip(cats["max"], c_lo, min(n_categories, n_hi)))
        names.append(name)
        parts.append(f"{name}={c_lo}-{c_hi}/{n_lo}-{n_hi}")
    return tuple(names), ",".join(parts)


def probe(bank: ExemplarBank, config: GenerateConfig) -> dict:
    """Compose the ``config.images`` images of ``config`` in memory (shadows and backgrounds off: they are drawn
    after placement and change no box) and measure their boxes."""
    config = dataclasses.replace(config, backgrounds=None, shadow_strength=0.0)
    return measure([compose_image(bank, config, i) for i in range(config.images)], config)


def measure(composed: list[tuple], config: GenerateConfig) -> dict:
    """:func:`rpc_synth.stats.summarize` of composed images' boxes."""
    boxes = []
    for _image, level, anns in composed:
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(len(anns), 4)
        cats = np.array([a["category_id"] for a in anns], np.int64)
        boxes.append(ImageBoxes(config.size, config.size, level, xywh, cats))
    return summarize(boxes, kind="probe", source=f"probe of {config.images} images")


def _scale(centre: float, half_width: float) -> tuple[float, float]:
    return (round(centre * (1 - half_width), 4), round(centre * (1 + half_width), 4))


def widen(target: dict, probe_stats: dict, half_width: float) -> float:
    """Relative half width w of the scale range U(c(1 - w), c(1 + w)) after comparing spreads of product size.

    The scale draw adds about w^2 / 3 to the variance of log size, beside what views, rotation, occlusion and
    SKU sizes add (most of it: on the mini world the base's +-17% is an eighth of the probe's log variance). So
    the range widens, by the checkout's excess variance, only when the checkout's spread exceeds the probe's by
    more than three times their combined standard error (at two, sets made alike widened by chance); it never
    narrows (from the spread the width is too noisy for that: on 60 mini-world images +-17% and +-30% differ by
    2.5 standard errors).
    """
    t, p = target["product_size"], probe_stats["product_size"]
    if t.get("log_spread") is None:  # an estimate from unlabeled photos: its spread is not product sizes'
        return half_width
    excess = t["log_spread"] - p["log_spread"]
    if excess <= 3 * math.hypot(t["log_spread_se"], p["log_spread_se"]):
        return half_width
    return float(min(math.sqrt(half_width**2 + 3 * excess), _MAX_HALF_WIDTH))


def pick_max_iou(grid: list[dict], target: float) -> float:
    """The ``max_iou`` whose probe's mean largest IoU is closest to ``target``, interpolated linearly between the
    two grid points around it when ``target`` lies between their probe values (rounded to 0.01)."""
    best = min(range(len(grid)), key=lambda i: abs(grid[i]["probe_max_iou"] - target))
    for j in (best - 1, best + 1):
        if 0 <= j < len(grid):
            a, b = grid[best], grid[j]
            lo, hi = sorted((a["probe_max_iou"], b["probe_max_iou"]))
            if lo < hi and lo <= target <= hi:
                t = (target - a["probe_max_iou"]) / (b["probe_max_iou"] - a["probe_max_iou"])
                return round(a["max_iou"] + t * (b["max_iou"] - a["max_iou"]), 2)
    return grid[best]["max_iou"]


def _warnings(target: dict, final: dict, grid: list[dict]) -> list[str]:
    out = []
    reach = max((g["probe_max_iou"] for g in grid), default=None)
    if reach is not None and target["max_iou"] > 1.1 * reach:
        out.append(f"the checkout's boxes overlap more (mean largest IoU {target['max_iou']:.3f}) than random placement "
                   f"reaches at any max_iou ({reach:.3f}): its products lie in piles")
    t, p = target["product_size"]["median"], final["product_size"]["median"]
    if abs(p / t - 1) > 0.1:
        out.append(f"median product size still differs: checkout {t:.4f}, synthesized {p:.4f} "
                   "(products capped at 0.9 of the image side, or few probe images)")
    if target["max_iou"] is None:
        out.append("estimated from unlabeled photos: max_iou is the base's (overlap needs boxes), product size and "
                   "instances carry the estimate's error (see the rpc-synth README)")
    return out


def _target_stats(checkout: Any) -> dict:
    if isinstance(checkout, dict) and checkout.get("kind") in ("labelled", "unlabeled"):
        return checkout
    if isinstance(checkout, (str, Path)) and Path(checkout).is_dir():
        from .unlabeled import unlabeled_stats

        return unlabeled_stats(checkout)
    return checkout_stats(checkout)


def fit_generate_config(
    exemplars: Any, images: str | Path, checkout: Any, base: GenerateConfig | None = None, *,
    probe_images: int = 48, seed: int = 0, iterations: int = 3, iou_grid: tuple[float, ...] = IOU_GRID,
) -> tuple[GenerateConfig, dict]:
    """Choose ``size``, ``levels``/``ranges``, ``scale`` and ``max_iou`` of ``base`` so that synthesized images
    look like the checkout images in product size, products per tray and overlap.

    ``exemplars``/``images``: the masks/poses JSON and its photos, as for ``generate``. ``checkout``: a labelled
    split (instances JSON path or dict), a folder of unlabeled checkout photos, or a stats dict of
    :func:`rpc_synth.stats.checkout_stats` / :func:`rpc_synth.unlabeled.unlabeled_stats`.

    ``size`` = the checkout's median side (multiple of 32); ranges = the observed min..max per level. Then by
    simulation on probes of ``probe_images`` images (seed ``seed``), measured with :func:`rpc_synth.stats.summarize`:
    ``iterations`` times, scale centre *= checkout median product size / probe median (the range's relative width
    kept, see :func:`widen`); then ``max_iou`` from ``iou_grid`` (:func:`pick_max_iou`: the probe's mean largest
    IoU closest to the checkout's); then one more scale correction at that ``max_iou``. From an unlabeled estimate
    ``max_iou`` stays the base's (overlap needs boxes). Returns the config and a JSON-able report (the checkout
    stats, every probe, the chosen values, the final probe's stats, warnings).
    """
    base = base or GenerateConfig()
    if probe_images < 3:
        raise InputError(f"probe_images should be at least 3 (one image per level), got {probe_images}")
    target = _target_stats(checkout)
    bank = load_bank(exemplars, images, base.categories)
    levels, ranges = fitted_ranges(target["levels"], len(bank.category_ids))
    trial = dataclasses.replace(base, images=probe_images, seed=seed, size=fitted_size(target["image_side"]),
                                levels=levels, ranges=ranges)
    lo, hi = base.scale
    centre, half_width = (lo + hi) / 2, (hi - lo) / (hi + lo)
    steps: list[dict] = []

    def correct_scale(max_iou: float) -> None:
        nonlocal centre, half_width
        stats = probe(bank, dataclasses.replace(trial, scale=_scale(centre, half_width), max_iou=max_iou))
        ratio = target["product_size"]["median"] / stats["product_size"]["median"]
        steps.append({"scale": list(_scale(centre, half_width)), "max_iou": max_iou,
                      "probe_product_size": stats["product_size"], "ratio": ratio})
        centre *= ratio
        half_width = widen(target, stats, half_width)

    for _ in range(iterations):
        correct_scale(base.max_iou)
    grid = []
    if target["max_iou"] is not None:
        for value in iou_grid:
            stats = probe(bank, dataclasses.replace(trial, scale=_scale(centre, half_width), max_iou=value))
            grid.append({"max_iou": value, "probe_max_iou": stats["max_iou"]})
        correct_scale(pick_max_iou(grid, target["max_iou"]))
    fitted = dataclasses.replace(base, size=trial.size, levels=levels, ranges=ranges,
                                 scale=_scale(centre, half_width), max_iou=steps[-1]["max_iou"])
    final = probe(bank, dataclasses.replace(trial, scale=fitted.scale, max_iou=fitted.max_iou))
    report = {
        "chosen": {k: _plain(getattr(fitted, k)) for k in FITTED_FIELDS},
        "checkout": target,
        "probe": final,
        "scale_steps": steps,
        "max_iou_grid": grid,
        "warnings": _warnings(target, final, grid),
        "probe_images": probe_images,
        "seed": seed,
    }
    return fitted, report


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def read_settings(path: str | Path) -> dict:
    """The GenerateConfig fields stored in a ``rpc-synth fit`` output (``{"generate": {...}, "report": {...}}``).

    Raises :class:`InputError` naming the file for anything else (unknown field, wrong shape).
    """
    data = load_json(path)
    fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    chosen = data.get("generate") if isinstance(data, dict) else None
    if not isinstance(chosen, dict):
        raise InputError(f"{path}: expected an object with a 'generate' object of settings; write it with `rpc-synth fit`")
    unknown = sorted(set(chosen) - fields)
    if unknown:
        raise InputError(f"{path}: generate: unknown settings {unknown}; expected GenerateConfig fields {sorted(fields)}")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items()}
    try:
        GenerateConfig(**settings)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: generate: {err}") from None
    return settings


def settings_document(config: GenerateConfig, report: dict) -> dict:
    """What ``rpc-synth fit`` writes: the fitted GenerateConfig fields and the report."""
    return {"generate": {k: _plain(getattr(config, k)) for k in FITTED_FIELDS}, "report": report}
