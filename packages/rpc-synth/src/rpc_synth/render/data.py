"""Unpaired training crops: synthesized images with their product masks (source), checkout images (target).

No torch here: crops are numpy arrays, and crop ``i`` of a run depends only on ``(seed, i)`` so a resumed
run sees exactly the crops an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rpc_metrics.io import FormatError, decode_mask, image_path, read_instances

from ..image_files import read_image
from .histogram import match_histograms


def product_mask(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """Union of instance masks (RLE ``segmentation``, else the box) as ``bool[height, width]``."""
    mask = np.zeros((height, width), bool)
    for ann in annotations:
        seg = ann.get("segmentation")
        if isinstance(seg, dict) and "counts" in seg:
            mask |= decode_mask(seg)
        else:
            x, y, w, h = (round(v) for v in ann["bbox"])
            mask[max(y, 0):y + h, max(x, 0):x + w] = True
    return mask


def listed_images(dataset: dict, image_dir: str | Path, source: str) -> list[Path]:
    """The image files that ``dataset`` (read from ``source``) lists, in its order, inside ``image_dir``; a missing one
    is a :class:`FormatError` naming it, so that a run stops before it writes, not when it first reads the file."""
    paths = [image_path(image_dir, im["file_name"], source=source) for im in dataset["images"]]
    for im, path in zip(dataset["images"], paths, strict=True):
        if not path.is_file():
            raise FormatError(source, f"image {im['id']} file_name {im['file_name']!r}", f"file not found in {image_dir}")
    return paths


@dataclass
class SourceImages:
    """Synthesized images listed in an instances JSON; pixels and product masks read on demand."""

    paths: list[Path]
    images: list[dict]
    annotations: dict[int, list[dict]]  # image id -> its annotations
    source: str
    match: np.ndarray | None = None  # target histograms int64[3, 256]: images are histogram-matched to them

    @classmethod
    def open(cls, image_dir: str | Path, instances: str | Path, match: np.ndarray | None = None) -> SourceImages:
        dataset = read_instances(instances)
        source = str(instances)
        by_image: dict[int, list] = {}
        for ann in dataset["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        images = sorted(dataset["images"], key=lambda im: im["id"])
        if not images:
            raise FormatError(source, "images", "no images listed")
        paths = listed_images({"images": images}, image_dir, source)
        return cls(paths, images, by_image, source, match)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.paths[index], self.source)
        if self.match is not None:
            image = match_histograms(image, self.match)
        info = self.images[index]
        mask = product_mask(self.annotations.get(info["id"], []), info["height"], info["width"])
        if mask.shape != image.shape[:2]:
            raise FormatError(self.source, f"image {info['id']}",
                              f"width/height {mask.shape[::-1]} differ from the file's {image.shape[1::-1]}")
        return image, mask


def random_crop(rng: np.random.Generator, image: np.ndarray, size: int, mask: np.ndarray | None = None):
    """A ``size`` x ``size`` crop at a random place, flipped left-right half of the time.

    Images smaller than ``size`` are reflected up to it. Returns the crop (and the mask's crop when given).
    """
    h, w = image.shape[:2]
    if h < size or w < size:
        pad = ((0, max(size - h, 0)), (0, max(size - w, 0)))
        image = np.pad(image, (*pad, (0, 0)), mode="reflect")
        mask = None if mask is None else np.pad(mask, pad, mode="reflect")
        h, w = image.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    flip = bool(rng.integers(0, 2))
    crop = image[y:y + size, x:x + size]
    crop = crop[:, ::-1] if flip else crop
    if mask is None:
        return np.ascontiguousarray(crop)
    mask_crop = mask[y:y + size, x:x + size]
    return np.ascontiguousarray(crop), np.ascontiguousarray(mask_crop[:, ::-1] if flip else mask_crop)


def training_batch(seed: int, iteration: int, source: SourceImages, target: list[Path], size: int, batch: int):
    """Crops for one iteration: ``(source uint8[B,S,S,3] BGR, masks bool[B,S,S], target uint8[B,S,S,3])``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, iteration]))
    src, masks, tgt = [], [], []
    for _ in range(batch):
        image, mask = source.load(int(rng.integers(len(source.paths))))
        crop, mask_crop = random_crop(rng, image, size, mask)
        src.append(crop)
        masks.append(mask_crop)
        tgt.append(random_crop(rng, read_image(target[int(rng.integers(len(target)))]), size))
    return np.stack(src), np.stack(masks), np.stack(tgt)
