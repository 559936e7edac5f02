"""Pair specialists: the SKU pairs a crop classifier confuses, and a two-class classifier trained on each pair's
crops alone (it learns the detail that tells look-alikes apart where the generalist learned colours first)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..classifier import CropClassifier
from .crops import augment_crops
from .loop import LoopOptions, run_loop
from .records import RunLog
from .schedule import build_scheduler


def confusable_pairs(truth: np.ndarray, named: np.ndarray, num_classes: int, *, min_rate: float = 0.05,
                     min_errors: int = 2, max_pairs: int = 8, first: Sequence[tuple[int, int]] = ()
                     ) -> list[tuple[int, int, float]]:
    """The pairs of classes a classifier mixes up: ``[(a, b, rate)]`` with ``a < b``, most confused first, where
    ``rate = (n(a named b) + n(b named a)) / (n(a) + n(b))`` (0 without crops) >= ``min_rate`` over at least
    ``min_errors`` errors; each class in one pair at most (the more confused one wins). The pairs ``first``
    (``a < b``, disjoint) lead the list whatever their rate, and the confused ones fill it up to ``max_pairs``."""
    truth, named = np.asarray(truth, np.int64), np.asarray(named, np.int64)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (truth, named), 1)
    np.fill_diagonal(confusion, 0)
    mutual = confusion + confusion.T
    support = np.bincount(truth, minlength=num_classes)
    rate = mutual / np.maximum(support[:, None] + support[None, :], 1)
    a, b = np.triu_indices(num_classes, 1)
    keep = (rate[a, b] >= min_rate) & (mutual[a, b] >= min_errors)
    order = np.lexsort((b[keep], a[keep], -rate[a, b][keep]))
    pairs = [(int(i), int(j), float(rate[i, j])) for i, j in first]
    used = {c for pair in first for c in pair}
    for i, j in zip(a[keep][order].tolist(), b[keep][order].tolist(), strict=True):
        if i in used or j in used or len(pairs) >= max_pairs:
            continue
        used.update((i, j))
        pairs.append((i, j, float(rate[i, j])))
    return pairs


def given_pairs(pairs: Sequence[Sequence[int]], category_ids: Sequence[int], source) -> list[tuple[int, int]]:
    """Category-id pairs -> class-index pairs ``(a, b)``, ``a < b``; a clear error for an unknown id, a pair that is
    not two different SKUs, or an SKU in two pairs."""
    index = {int(c): i for i, c in enumerate(category_ids)}
    out, used = [], set()
    for pair in pairs:
        ids = [int(c) for c in pair]
        if len(ids) != 2 or ids[0] == ids[1]:
            raise ValueError(f"specialist pair {pair}: give two different category ids, e.g. 3,23")
        unknown = [c for c in ids if c not in index]
        if unknown:
            raise ValueError(f"specialist pair {pair}: category id {unknown[0]} is not among the {len(index)} "
                             f"categories of {source}")
        if used & set(ids):
            raise ValueError(f"specialist pair {pair}: category {sorted(used & set(ids))[0]} is already in another "
                             "pair (each SKU in one pair at most)")
        used.update(ids)
        a, b = sorted(index[c] for c in ids)
        out.append((a, b))
    return out


def _balanced_batches(crops: np.ndarray, members: list[np.ndarray], per_class: int, rng: np.random.Generator,
                      camera: float) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    target = torch.arange(len(members)).repeat_interleave(per_class)
    while True:
        idx = np.concatenate([rng.choice(m, size=per_class) for m in members])
        x = augment_crops(crops[idx], rng, camera=camera).contiguous(memory_format=torch.channels_last)
        yield x, target


def train_specialist(crops: np.ndarray, labels: np.ndarray, classes: tuple[int, ...], body_state: dict, *,
                     channels: tuple[int, ...], norm: str, steps: int, batch_size: int, lr: float, seed: int,
                     camera: float, bf16: bool = False, log: RunLog | None = None,
                     label: str = "specialist") -> CropClassifier:
    """A classifier of ``classes`` (output ``k`` = ``classes[k]``) started from ``body_state``, trained on those
    classes' crops with equally many of each per batch (the same augmentation and schedule as the pretraining)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    members = [np.flatnonzero(labels == c) for c in classes]
    if any(len(m) == 0 for m in members):
        raise ValueError(f"no crops of class {[c for c, m in zip(classes, members, strict=True) if not len(m)]}")
    model = CropClassifier(len(classes), channels, norm)
    model.body.load_state_dict(body_state)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = build_scheduler(optimizer, max_steps=steps, warmup_steps=min(20, steps // 10), schedule="cosine")
    per_class = max(1, batch_size // len(classes))

    def losses_of(batch):
        x, y = batch
        return {"loss_classifier": F.cross_entropy(model(x).float(), y, label_smoothing=0.1)}

    hint = "; run again with --precision float32" if bf16 else "; lower --lr"
    options = LoopOptions(max_steps=steps, autocast="cpu" if bf16 else None, log=log, log_every=50, label=label,
                          unit="crops", items_per_step=per_class * len(classes), hint=hint)
    model.train()
    run_loop(model, optimizer, scheduler, _balanced_batches(crops, members, per_class, rng, camera), losses_of,
             options)
    return model.eval()
