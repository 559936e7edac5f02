"""``generate``: synthesized checkout images from masked, pose-pruned exemplars.

Per image (randomness from ``SeedSequence([seed, index])`` only, so output never depends on workers or
shards): a level and a basket, one kept exemplar per instance cut out with its mask, random scale,
rotation and colour jitter, placement under a box-IoU limit (relaxed when crowded), soft shadows, later
items occluding earlier ones; instances hidden beyond ``min_visible`` are dropped, the others get boxes,
``point_xy`` and COCO RLE masks of their visible part.

Output folder: ``synth2019/*.jpg``, ``parts/*.json`` (one per finished image, with its image's size: what makes
runs resumable and shards mergeable; a part whose image is gone or of another size is made again),
``generate.json`` (the settings, the exemplars' digest and the photos folder, checked on resume:
:mod:`rpc_synth.records`) and, once every image exists, ``instances_synth2019.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rpc_metrics.io import (
    LEVELS,
    FormatError,
    decode_mask,
    encode_mask,
    load_json,
    write_instances,
    write_json,
)

from .baskets import parse_ranges, sample_basket
from .checkout_camera import smooth_field
from .compose import cast_shadow, paste, place, squash_sprite, transform_sprite, visible_parts
from .exemplars import Exemplar, load_exemplars
from .image_files import folder_images, read_image, write_jpeg
from .parallel import map_ordered
from .progress import Progress
from .records import InputError, keep_record
from .views import Sprite

IMAGE_DIR = "synth2019"
OUTPUT_JSON = "instances_synth2019.json"


@dataclass(frozen=True)
class GenerateConfig:
    """What ``generate`` makes. Scales are relative to ``size / exemplar width`` (the camera change)."""

    images: int = 600
    size: int = 384  # output images are square, size x size px
    seed: int = 0
    levels: tuple[str, ...] = LEVELS  # cycled over image indices: equal shares
    ranges: str = ""  # overrides of the RPC ranges, e.g. "easy=3-5/3-10"
    categories: tuple[int, ...] = ()  # restrict to these SKUs (default: every SKU with a kept exemplar)
    scale: tuple[float, float] = (0.5, 0.7)
    max_iou: float = 0.3  # placement box-IoU limit, raised by 0.1 when an object finds no place
    min_visible: float = 0.3  # instances with less of their mask visible are dropped (not counted)
    shadow_strength: float = 0.4
    color_jitter: float = 0.1
    backgrounds: str | None = None  # folder of background photos; procedural when None
    jpeg_quality: int = 90
    # Share of instances foreshortened by a factor drawn from [squash_min, 1): views the exemplars lack. Along
    # squash_axis of the exemplar image: "y" stands for a steeper camera (a flat bag's face seen more from above),
    # "x" for a turn about the product's own axis. 0: off.
    squash: float = 0.0
    squash_min: float = 0.3
    squash_axis: str = "y"

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ValueError(f"images should be >= 1, got {self.images}")
        if not 64 <= self.size <= 4096:
            raise ValueError(f"size should be between 64 and 4096 px, got {self.size}")
        ranges = parse_ranges(self.ranges)
        unknown = [lv for lv in self.levels if lv not in ranges]
        if unknown or not self.levels:
            raise ValueError(f"levels should be among {sorted(ranges)}, got {list(self.levels)}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale should be 0 < lo <= hi, got {self.scale}")
        if not 0.0 <= self.min_visible < 1.0:
            raise ValueError(f"min_visible should be in [0, 1), got {self.min_visible}")
        if not 0.0 <= self.squash <= 1.0:
            raise ValueError(f"squash should be a share in [0, 1], got {self.squash}")
        if not 0.0 < self.squash_min <= 1.0:
            raise ValueError(f"squash_min should be in (0, 1], got {self.squash_min}")
        if not (0.0 <= self.max_iou <= 1.0 and 0.0 <= self.shadow_strength <= 1.0 and 0.0 <= self.color_jitter < 1.0):
            raise ValueError(f"max_iou and shadow_strength should be in [0, 1], color_jitter in [0, 1), got "
                             f"{self.max_iou}, {self.shadow_strength}, {self.color_jitter}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality should be in [1, 100], got {self.jpeg_quality}")
        if self.squash_axis not in ("x", "y"):
            raise ValueError(f"squash_axis should be 'x' or 'y', got {self.squash_axis!r}")


# ------------------------------------------------------------------------------------ exemplar bank


class ExemplarBank:
    """Kept exemplars per category, with their cut-outs loaded on first use (cached per process)."""

    def __init__(self, exemplars: list[Exemplar], categories: list[dict]):
        self.by_category: dict[int, list[Exemplar]] = {}
        for e in exemplars:
            self.by_category.setdefault(e.category_id, []).append(e)
        self.categories = categories
        self._cache: dict[int, Sprite] = {}

    @property
    def category_ids(self) -> list[int]:
        return sorted(self.by_category)

    def sprite(self, exemplar: Exemplar) -> Sprite:
        cached = self._cache.get(exemplar.image_id)
        if cached is None:
            cached = self._cut_out(exemplar)
            if len(self._cache) > 2048:
                self._cache.clear()
            self._cache[exemplar.image_id] = cached
        return cached

    @staticmethod
    def _cut_out(exemplar: Exemplar) -> Sprite:
        image = read_image(exemplar.path, what="exemplar image")
        mask = decode_mask(exemplar.annotation["segmentation"])
        if mask.shape != image.shape[:2]:
            raise FormatError(str(exemplar.path), "", f"mask size {mask.shape} differs from the image {image.shape[:2]}")
        x, y, w, h = exemplar.bbox
        x0, y0 = max(int(x), 0), max(int(y), 0)
        x1, y1 = min(int(np.ceil(x + w)), image.shape[1]), min(int(np.ceil(y + h)), image.shape[0])
        alpha = mask[y0:y1, x0:x1].astype(np.float32)
        return Sprite(np.ascontiguousarray(image[y0:y1, x0:x1]), alpha)


def load_bank(exemplars: Any, images: str | Path, categories: tuple[int, ...] = ()) -> ExemplarBank:
    """Read a masks/poses JSON and its photos; keep views with ``pose_kept`` (all when absent).

    Raises :class:`FormatError` for bad files (see :func:`load_exemplars`) or an exemplar without a mask,
    and :class:`InputError` when a requested category has no kept exemplar.
    """
    source = str(exemplars) if isinstance(exemplars, (str, Path)) else "<exemplars>"
    dataset, items = load_exemplars(exemplars, images, source=source)
    kept = []
    for e in items:
        if not e.annotation.get("pose_kept", True):
            continue
        if not isinstance(e.annotation.get("segmentation"), dict):
            raise FormatError(source, f"annotations id={e.annotation['id']}",
                              "has no RLE mask in 'segmentation'; run `rpc-synth masks` (and `poses`) first")
        kept.append(e)
    known = {c["id"] for c in dataset["categories"]}
    if categories:
        wanted = set(categories)
        for c in sorted(wanted - known):
            raise InputError(f"{source}: category {c} is not in the categories of this file")
        have = {e.category_id for e in kept}
        empty = sorted(wanted - have)
        if empty:
            raise InputError(f"{source}: no kept exemplar for requested categories {empty}; "
                             "lower the pose threshold or drop them from --categories")
        kept = [e for e in kept if e.category_id in wanted]
    if not kept:
        raise InputError(f"{source}: no kept exemplar at all; check the masks/poses file")
    return ExemplarBank(kept, dataset["categories"])


# ------------------------------------------------------------------------------------ one image


def _background(config: GenerateConfig, rng: np.random.Generator, backgrounds: list[Path]) -> np.ndarray:
    size = config.size
    if backgrounds:
        path = backgrounds[int(rng.integers(len(backgrounds)))]
        photo = read_image(path, what="background image")
        h, w = photo.shape[:2]
        side = min(h, w)
        y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = photo[y0 : y0 + side, x0 : x0 + side]
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = rng.uniform(60, 200, size=3)
    canvas *= (1.0 + 0.12 * smooth_field(rng, size, 6))[..., None]
    return canvas


def _jitter(sprite: Sprite, rng: np.random.Generator, amount: float) -> Sprite:
    if not amount:
        return sprite
    gains = rng.uniform(1 - amount, 1 + amount, size=3) * rng.uniform(1 - amount, 1 + amount)
    image = np.clip(sprite.image.astype(np.float32) * gains.astype(np.float32), 0, 255).astype(np.uint8)
    return Sprite(image, sprite.alpha)


def compose_image(bank: ExemplarBank, config: GenerateConfig, index: int, backgrounds: list[Path] = ()) -> tuple[np.ndarray, str, list[dict]]:
    """Synthesize image ``index``: ``image (uint8[S, S, 3])``, its level and annotations (no ids yet)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    level = config.levels[index % len(config.levels)]
    size = config.size
    basket = sample_basket(level, bank.category_ids, rng, parse_ranges(config.ranges))
    sprites = []
    for category_id in basket:
        options = bank.by_category[category_id]
        exemplar = options[int(rng.integers(len(options)))]
        scale = rng.uniform(*config.scale) * size / exemplar.width
        sprite = bank.sprite(exemplar)
        if config.squash and rng.random() < config.squash:  # no draw when off: outputs stay those of before
            sprite = squash_sprite(sprite, rng.uniform(config.squash_min, 1.0), config.squash_axis)
        sprite = transform_sprite(sprite, scale, rng.uniform(0, 360))
        largest = max(sprite.alpha.shape)
        if largest > 0.9 * size:
            sprite = transform_sprite(sprite, 0.9 * size / largest, 0.0)
        sprites.append(_jitter(sprite, rng, config.color_jitter))
    corners = place([s.alpha.shape for s in sprites], (size, size), rng, max_iou=config.max_iou)
    canvas = _background(config, rng, list(backgrounds))
    labels = np.zeros((size, size), np.int32)
    offset = (round(rng.uniform(-0.02, 0.02) * size), round(rng.uniform(0.005, 0.025) * size))
    sigma = rng.uniform(0.01, 0.025) * size
    for k, (sprite, (x, y)) in enumerate(zip(sprites, corners, strict=True)):
        if config.shadow_strength:
            cast_shadow(canvas, sprite, x, y, offset, sigma, config.shadow_strength)
        paste(canvas, labels, sprite, x, y, k + 1)
    annotations = []
    for v in visible_parts(labels, sprites, corners, config.min_visible):
        x, y, w, h = v.bbox
        annotations.append({"category_id": basket[v.index], "bbox": v.bbox, "area": float(v.area), "iscrowd": 0,
                            "point_xy": [x + w / 2, y + h / 2], "segmentation": encode_mask(v.mask)})
    return np.clip(canvas, 0, 255).astype(np.uint8), level, annotations


# ------------------------------------------------------------------------------------ the stage


def image_file_name(index: int) -> str:
    return f"synth_{index + 1:06d}.jpg"


def _part_path(out: Path, index: int) -> Path:
    return out / "parts" / f"{index + 1:06d}.json"


_JOB: dict = {}


def _generate_task(task: tuple[dict, int]) -> dict:
    job, index = task
    key = (job["exemplars"], job["images"], job["config"].categories)
    bank = _JOB.get(key)
    if bank is None:
        bank = load_bank(job["exemplars"], job["images"], job["config"].categories)
        _JOB.clear()
        _JOB[key] = bank
    out = Path(job["out"])
    try:
        image, level, annotations = compose_image(bank, job["config"], index, job["backgrounds"])
    except FormatError as err:
        return {"error": str(err)}
    name = image_file_name(index)
    try:
        written = write_jpeg(out / IMAGE_DIR / name, image, job["config"].jpeg_quality, optimize=False)
    except FormatError as err:
        return {"error": str(err)}
    part = {"index": index, "file_name": name, "width": job["config"].size, "height": job["config"].size,
            "level": level, "bytes": written.stat().st_size, "annotations": annotations}
    write_json(part, _part_path(out, index))
    return part


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise InputError(f"--shard should be i/n with 0 <= i < n (e.g. 0/4), got {text!r}") from None
    return i, n


def _settings(config: GenerateConfig, exemplars: Path, images: str | Path, backgrounds: list[Path]) -> dict:
    """What ``generate.json`` records: the config, the exemplars file's digest, the photos folder, the backgrounds."""
    digest = hashlib.sha256(exemplars.read_bytes()).hexdigest()[:16]
    fields = dataclasses.asdict(config)
    if not config.squash:  # off: the settings of folders made before the option existed still match
        del fields["squash"], fields["squash_min"], fields["squash_axis"]
    return {"config": fields, "exemplars_sha256": digest, "images": str(Path(images).resolve()),
            "backgrounds": [p.name for p in backgrounds]}


def _done(out: Path, index: int) -> bool:
    """Whether image ``index`` is finished: its part exists and so does its image, of the size the part records
    (parts written before sizes were recorded: the image exists). Otherwise the image is made again."""
    part = _part_path(out, index)
    if not part.is_file():
        return False
    image = out / IMAGE_DIR / image_file_name(index)
    try:
        size = load_json(part).get("bytes")
    except FormatError:  # a part cut short (writes are atomic: only by hand)
        return False
    return image.is_file() and size in (None, image.stat().st_size)


def _list_backgrounds(folder: str | None) -> list[Path]:
    if folder is None:
        return []
    try:
        return folder_images(folder, "background images")
    except FormatError as err:
        raise InputError(str(err)) from None


def generate(
    exemplars: str | Path, images: str | Path, out: str | Path, config: GenerateConfig | None = None, *,
    workers: int = 1, shard: str | None = None, progress: bool = True,
) -> dict | None:
    """Synthesize ``config.images`` checkout images from the masks/poses JSON ``exemplars`` (photos in ``images``).

    Only images ``index % n == i`` are made for ``shard="i/n"``; finished images are skipped (resumable).
    When every image exists (this run or earlier runs/shards in the same ``out``) the dataset JSON
    ``out/instances_synth2019.json`` is written and returned; otherwise returns None.
    """
    config = config or GenerateConfig()
    shard_i, shard_n = parse_shard(shard)
    exemplars, out = Path(exemplars), Path(out)
    bank = load_bank(exemplars, images, config.categories)  # every input check before anything is written
    ranges = parse_ranges(config.ranges)
    for level in config.levels:
        need = ranges[level][0][0]
        if len(bank.category_ids) < need:
            raise InputError(f"{exemplars}: level {level!r} needs {need} categories with kept exemplars, "
                             f"found {len(bank.category_ids)}; pass --levels/--ranges that fit")
    backgrounds = _list_backgrounds(config.backgrounds)
    # `images` joined the record later: a folder made before it resumes (and records it now).
    keep_record(out / "generate.json", _settings(config, exemplars, images, backgrounds), what="generated images",
                since=("images",))
    mine = [i for i in range(config.images) if i % shard_n == shard_i]
    todo = [i for i in mine if not _done(out, i)]
    bar = Progress(len(todo), "rpc-synth generate", enabled=progress)
    if len(todo) < len(mine):
        bar.note(f"rpc-synth generate: resuming, {len(mine) - len(todo)} of {len(mine)} images already in {out}")
    _JOB[(str(exemplars), str(images), config.categories)] = bank
    job = {"exemplars": str(exemplars), "images": str(images), "out": str(out), "config": config,
           "backgrounds": backgrounds}
    for part in map_ordered(_generate_task, [(job, i) for i in todo], workers):
        if "error" in part:
            raise FormatError(str(exemplars), "", part["error"])
        bar.update()
    if not all(_done(out, i) for i in range(config.images)):
        bar.note(f"rpc-synth generate: shard {shard_i}/{shard_n} done; the dataset JSON is written once every shard is")
        return None
    dataset = assemble(out, config.images, bank.categories, exemplars)
    return dataset


def assemble(out: Path, n_images: int, categories: list[dict], exemplars: Path) -> dict:
    """Join the per-image parts into ``out/instances_synth2019.json`` (ids in image order)."""
    images, annotations = [], []
    for index in range(n_images):
        part = load_json(_part_path(out, index))
        image_id = index + 1
        image = {"file_name": part["file_name"], "width": part["width"], "height": part["height"], "id": image_id}
        if part["level"] in LEVELS:  # a fitted pooled level ("all") is no RPC level: the images carry none
            image["level"] = part["level"]
        images.append(image)
        for ann in part["annotations"]:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": image_id})
    info = {"description": f"rpc-synth generate from {exemplars.name}", "year": 2019, "version": "1.0"}
    dataset = {"info": info, "licenses": [], "categories": categories, "images": images, "annotations": annotations}
    write_instances(dataset, out / OUTPUT_JSON)
    return dataset
