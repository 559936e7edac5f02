"""Datasets: RPC/COCO instances JSON + image folder, mixed with sampling ratios, with deterministic augmentation;
image files read (decompression bombs refused) and written (atomically).

Samples are addressed as ``(dataset_index, image_index, seed)`` by :class:`MixSampler`, so the augmentation of a
sample depends only on the run's seed, the epoch and its position: the same with any number of workers or
processes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from rpc_metrics.counts import count_class_index
from rpc_metrics.files import write_bytes
from rpc_metrics.images import check_image_size, jpeg_cut_short
from rpc_metrics.io import FormatError, image_path, read_instances


@dataclass
class CategoryMap:
    """Detection labels and counting classes of a category list.

    ``category_ids[l - 1]`` is the COCO category of detection label ``l`` (0 is background);
    ``count_names[c]`` is the key of counting class ``c`` in the counts file, and ``count_class_of_label[l]``
    maps a label to its counting class (``count_classes`` in ``category | supercategory | object``).
    """

    category_ids: list[int]
    count_classes: str
    count_names: list[str]
    count_class_of_label: list[int]
    category_names: list[str] = field(default_factory=list)

    @classmethod
    def from_categories(cls, categories: Sequence[Mapping], count_classes: str = "category") -> CategoryMap:
        """Labels in category id order; the counting classes as rpc-metrics reads counts files
        (:func:`rpc_metrics.counts.count_class_index`)."""
        class_of, names = count_class_index(categories, count_classes)
        cats = sorted(categories, key=lambda c: c["id"])
        return cls([c["id"] for c in cats], count_classes, names, [0, *(class_of[c["id"]] for c in cats)],
                   [c.get("name", "") for c in cats])

    @property
    def num_classes(self) -> int:
        """Detection classes including background."""
        return len(self.category_ids) + 1

    def to_dict(self) -> dict:
        return {"category_ids": self.category_ids, "count_classes": self.count_classes,
                "count_names": self.count_names, "count_class_of_label": self.count_class_of_label,
                "category_names": self.category_names}


@dataclass
class Augment:
    """Training augmentation: flips, scale jitter (image resized by a factor in ``scale``), colour jitter."""

    hflip: float = 0.5
    vflip: float = 0.5
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __call__(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``image`` float32 [H, W, 3] RGB in [0, 1], ``boxes`` float32 [K, 4] (x1, y1, x2, y2) -> both augmented."""
        h, w = image.shape[:2]
        if self.scale[0] != 1.0 or self.scale[1] != 1.0:
            f = float(rng.uniform(*self.scale))
            nw, nh = max(1, round(w * f)), max(1, round(h * f))
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
            h, w = nh, nw
        if rng.random() < self.hflip:
            image = image[:, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        if rng.random() < self.vflip:
            image = image[::-1]
            boxes = np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], axis=1)
        image = colour_jitter(image, rng, self.brightness, self.contrast, self.saturation)
        return np.ascontiguousarray(image), boxes.astype(np.float32)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                  saturation: float) -> np.ndarray:
    """Scale brightness, contrast (around the mean) and saturation (around the grey value) by random factors
    in ``[1 - x, 1 + x]``, in that order; the result is clipped to [0, 1].

    The three steps compose into one affine map of each pixel's colour (:func:`jitter_map`), applied in one pass
    by ``cv2.transform``."""
    b = rng.uniform(1 - brightness, 1 + brightness) if brightness else 1.0
    c = rng.uniform(1 - contrast, 1 + contrast) if contrast else 1.0
    s = rng.uniform(1 - saturation, 1 + saturation) if saturation else 1.0
    image = np.ascontiguousarray(image, dtype=np.float32)
    mean = float(image.mean(dtype=np.float64)) if contrast else 0.0
    matrix, offset = jitter_map(np.float64(b), np.float64(c), np.float64(s), np.float64(mean))
    out = cv2.transform(image.reshape(-1, 1, 3), np.concatenate([matrix, np.full((3, 1), offset)], axis=1))
    out = out.reshape(image.shape)
    return np.clip(out, 0.0, 1.0, out=out)


def jitter_map(b: np.ndarray, c: np.ndarray, s: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightness ``b``, contrast ``c`` around the image mean ``mean`` and saturation ``s`` around each pixel's
    grey value g (its channels' mean), composed into one affine colour map
    ``out = s*c*b * rgb + (1 - s)*c*b * g + (1 - c)*b*mean``: ``(matrix [..., 3, 3], offset [...])``, ``out = matrix
    @ rgb + offset``, for one image (scalars) or a batch (arrays [B])."""
    b, c, s, mean = (np.asarray(v, np.float64) for v in (b, c, s, mean))
    matrix = ((1 - s) * c * b / 3)[..., None, None] * np.ones((3, 3)) + (s * c * b)[..., None, None] * np.eye(3)
    return matrix, (1 - c) * b * mean


def camera_shot(images: np.ndarray, gain: np.ndarray, sigma: np.ndarray, noise: np.ndarray,
                quality: np.ndarray) -> np.ndarray:
    """What a checkout camera does to a clean render (the crop classifier's training crops get it: see
    :func:`dpsnet.training.crops.draw_crop_params`), on float32 RGB images [B, H, W, 3] in [0, 1] with given strengths: per-channel ``gain``
    [B, 3], Gaussian blur of ``sigma`` [B] px (none up to 0.3), additive ``noise`` [B, H, W, 3] (float32, already
    scaled), then 8-bit quantisation and a JPEG round trip at ``quality`` [B]. Returns float32 [B, H, W, 3]."""
    shot = images * gain.astype(np.float32)[:, None, None, :]
    for j, sig in enumerate(sigma):
        if sig > 0.3:
            shot[j] = cv2.GaussianBlur(shot[j], (0, 0), float(sig))
    encoded = (np.clip(shot + noise, 0.0, 1.0) * 255).round().astype(np.uint8)
    for j, q in enumerate(quality):
        ok, buffer = cv2.imencode(".jpg", encoded[j], [cv2.IMWRITE_JPEG_QUALITY, int(q)])
        if ok:
            encoded[j] = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    return encoded.astype(np.float32) / 255.0


def read_image(path: Path) -> np.ndarray:
    """An image file as float32 RGB [H, W, 3] in [0, 1]. A missing file or a header claiming too many pixels (a
    decompression bomb, refused before decoding: :func:`rpc_metrics.images.check_image_size`) raises
    ``FormatError``, a file OpenCV cannot decode ``FileNotFoundError``, each naming the file."""
    check_image_size(path)
    data = np.fromfile(path, dtype=np.uint8)
    if jpeg_cut_short(data.tobytes()):
        raise FormatError(str(path), "", "this image is cut short (a truncated JPEG); copy or make it again")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FileNotFoundError(f"image not found or unreadable: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def write_image(path: str | Path, picture: np.ndarray) -> Path:
    """Write a BGR uint8 picture to ``path``, encoded by its suffix (``.png``, ``.jpg``), atomically
    (:func:`rpc_metrics.files.write_bytes`: a killed writer leaves no half-written file)."""
    ok, buffer = cv2.imencode(Path(path).suffix, picture)
    if not ok:
        raise OSError(f"could not encode {path}")
    return write_bytes(buffer.tobytes(), path)


def coco_to_xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


class InstancesDataset:
    """One instances (or pool) JSON and its image folder.

    ``dataset[i]`` (or ``dataset[(i, seed)]`` to augment with that seed) returns ``(image, target)``:
    ``image (Tensor[3, H, W])`` in [0, 1], ``target`` with ``boxes (Tensor[K, 4])`` (x1, y1, x2, y2),
    ``labels (Tensor[K] int64)``, ``iscrowd (Tensor[K] int64)`` and ``image_id (int)``. Boxes narrower than
    ``min_box_size`` pixels after clipping to the image are dropped.
    """

    def __init__(self, instances: str | Path | Mapping, image_dir: str | Path, categories: CategoryMap, *,
                 augment: Augment | None = None, min_box_size: float = 1.0):
        self.source = str(instances) if isinstance(instances, (str, Path)) else "<in-memory>"
        self.dataset = read_instances(instances)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.images = sorted(self.dataset["images"], key=lambda im: im["id"])
        self.label_of = {cid: i + 1 for i, cid in enumerate(categories.category_ids)}
        self.augment = augment
        self.min_box_size = min_box_size
        self.annotations: dict[int, list[Mapping]] = defaultdict(list)
        for ann in self.dataset["annotations"]:
            if ann["category_id"] not in self.label_of:
                raise ValueError(f"{self.source}: category_id {ann['category_id']} is not among the model's "
                                 f"categories; train with the same category list")
            self.annotations[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        info = self.images[index]
        image = read_image(image_path(self.image_dir, info["file_name"], source=self.source))
        anns = self.annotations.get(info["id"], [])
        boxes = np.array([coco_to_xyxy(a["bbox"]) for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([self.label_of[a["category_id"]] for a in anns], dtype=np.int64)
        crowd = np.array([int(a.get("iscrowd", 0)) for a in anns], dtype=np.int64)
        if self.augment is not None and seed is not None:
            image, boxes = self.augment(image, boxes, np.random.default_rng(seed))
        h, w = image.shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        target = {"boxes": torch.from_numpy(boxes[keep]), "labels": torch.from_numpy(labels[keep]),
                  "iscrowd": torch.from_numpy(crowd[keep]), "image_id": int(info["id"])}
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), target


class MixedDataset:
    """Several datasets addressed by ``(dataset_index, image_index, seed)`` (see :class:`MixSampler`)."""

    def __init__(self, datasets: Sequence[InstancesDataset]):
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor, dict]:
        ds, index, seed = key
        image, target = self.datasets[ds][(index, seed)]
        target["dataset"] = ds
        return image, target


class MixSampler:
    """Epochs of ``(dataset_index, image_index, seed)`` drawn from datasets in proportion to ``ratios``.

    Each epoch holds ``epoch_size`` samples (default: the total size), split by ``ratios`` (normalised) and
    taken from a fresh permutation of each dataset (cycling when a dataset is smaller than its share), then
    shuffled; under DDP each of ``world_size`` ranks takes every ``world_size``-th sample (the epoch is padded
    to a multiple). Everything is a function of ``seed`` and the epoch.
    """

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float] | None = None, *, seed: int = 0,
                 epoch_size: int | None = None, rank: int = 0, world_size: int = 1):
        ratios = [1.0 * s for s in sizes] if ratios is None else [float(r) for r in ratios]
        if len(ratios) != len(sizes) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"ratios should be one non-negative number per dataset ({len(sizes)}), got {ratios}")
        if any(s == 0 and r > 0 for s, r in zip(sizes, ratios, strict=True)):
            raise ValueError("a dataset with a positive sampling ratio has no images")
        self.sizes, self.seed, self.rank, self.world_size = list(sizes), seed, rank, world_size
        self.ratios = [r / sum(ratios) for r in ratios]
        self.epoch_size = epoch_size or sum(sizes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_samples(self, epoch: int) -> list[tuple[int, int, int]]:
        """All samples of ``epoch`` before sharding (padded with its first ones to a multiple of world_size)."""
        rng = np.random.default_rng([self.seed, epoch])
        counts = [math.floor(r * self.epoch_size) for r in self.ratios]
        for i in np.argsort([-(r * self.epoch_size - c) for r, c in zip(self.ratios, counts, strict=True)]):
            if sum(counts) >= self.epoch_size:
                break
            counts[int(i)] += 1
        picks = []
        for ds, (size, count) in enumerate(zip(self.sizes, counts, strict=True)):
            order = np.concatenate([rng.permutation(size) for _ in range(-(-count // size))]) if count else []
            picks += [(ds, int(i)) for i in order[:count]]
        picks = [picks[i] for i in rng.permutation(len(picks))]
        seeds = rng.integers(0, 2**31 - 1, size=len(picks))
        samples = [(ds, i, int(s)) for (ds, i), s in zip(picks, seeds, strict=True)]
        total = -(-len(samples) // self.world_size) * self.world_size
        return samples + samples[: total - len(samples)]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(self.epoch_samples(self.epoch)[self.rank::self.world_size])

    def __len__(self) -> int:
        return -(-self.epoch_size // self.world_size)


def collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """A list of (image, target) pairs -> (list of images, list of targets), as torchvision detection wants."""
    return [b[0] for b in batch], [b[1] for b in batch]
