"""The detector's training data: its datasets and category map, the batches of a run epoch after epoch (resumable
mid-epoch), and which datasets soft distillation applies to."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from rpc_metrics.io import read_instances

from ..config import DataSection, Sections
from ..data import Augment, CategoryMap, InstancesDataset, MixedDataset, MixSampler, collate
from .distill import SoftDistiller


def train_datasets(data: DataSection, count_classes: str) -> tuple[list[InstancesDataset], CategoryMap]:
    """The training datasets of ``data`` and the category map (from the first JSON's categories)."""
    paths = [p for p in data.train_instances if p]
    folders = [p for p in data.train_images if p]
    if not paths:
        raise ValueError("data.train_instances is empty; give at least one training instances JSON")
    if len(folders) != len(paths):
        raise ValueError(f"data.train_images should name one image folder per training JSON ({len(paths)}), "
                         f"got {len(folders)}")
    first = read_instances(paths[0])
    categories = CategoryMap.from_categories(first["categories"], count_classes)
    augment = Augment(hflip=data.hflip, vflip=data.vflip, scale=(data.scale_min, data.scale_max),
                      brightness=data.brightness, contrast=data.contrast, saturation=data.saturation)
    datasets = []
    for path, folder in zip(paths, folders, strict=True):
        ds = InstancesDataset(first if path == paths[0] else path, folder, categories, augment=augment,
                              min_box_size=data.min_box_size)
        ds.source = path
        datasets.append(ds)
    return datasets, categories


def soft_distiller(cfg: Sections, categories: CategoryMap, num_datasets: int,
                   device: torch.device) -> tuple[SoftDistiller | None, set[int]]:
    """The config's :class:`SoftDistiller` (``train.distill_weight > 0``, else None) and the indices of the
    training datasets whose images it applies to."""
    if cfg.train.distill_weight <= 0:
        return None, set()
    flags = cfg.data.train_distill
    if len(flags) not in (1, num_datasets):
        raise ValueError(f"data.train_distill should hold one true/false per training JSON ({num_datasets}), "
                         f"or one for all, got {len(flags)}")
    teacher = cfg.train.distill_checkpoint or cfg.train.init_checkpoint
    if not teacher:
        raise ValueError("train.distill_weight > 0 needs a teacher: set train.distill_checkpoint "
                         "(or train.init_checkpoint)")
    distiller = SoftDistiller(teacher, categories, weight=cfg.train.distill_weight,
                              temperature=cfg.train.distill_temperature, device=device)
    return distiller, {i for i in range(num_datasets) if (flags[0] if len(flags) == 1 else flags[i])}


class _Keys:
    """A map-style view of ``dataset`` at the given keys (one epoch's samples for this rank)."""

    def __init__(self, dataset, keys):
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        return self.dataset[self.keys[i]]


class EpochBatches:
    """A run's batches, epoch after epoch from ``(epoch, position)`` on: ``position`` counts the batches of the
    epoch handed out so far, so that a checkpoint taken after a step resumes at the next batch."""

    def __init__(self, sampler: MixSampler, dataset: MixedDataset, batch_size: int, num_workers: int = 0):
        self.sampler, self.dataset = sampler, dataset
        self.batch_size, self.num_workers = batch_size, num_workers
        self.epoch, self.position = 0, 0

    def __iter__(self) -> Iterator[tuple[list, list]]:
        while True:
            self.sampler.set_epoch(self.epoch)
            keys = list(iter(self.sampler))
            loader = DataLoader(_Keys(self.dataset, keys[self.position * self.batch_size:]),
                                batch_size=self.batch_size, shuffle=False, collate_fn=collate,
                                num_workers=self.num_workers, drop_last=True,
                                generator=torch.Generator().manual_seed(self.epoch))  # keeps the global RNG untouched
            for batch in loader:
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0


def to_device(images, targets, device: torch.device):
    """A batch's images and target tensors on ``device``."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets
