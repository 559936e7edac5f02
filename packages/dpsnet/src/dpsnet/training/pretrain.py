"""Backbone pretraining on product crops as SKU classification: ImageNet weights' stand-in on the mini world.

Each product box is cropped (with a margin), resized to ``size`` x ``size`` and classified into its SKU with the
small body + a linear layer; flips, 90-degree rotations, scale and colour jitter and a camera's effects stand in
for the poses and lighting of checkout images. The whole classifier goes to one file
(:mod:`dpsnet.classifier`): ``model.backbone_weights`` loads its body, ``dpsnet predict --reclassifier`` all of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoint import save_checkpoint
from ..classifier import CropClassifier, CropClassifierFile
from ..device import native_bf16
from .crops import augment_crops, exemplar_crops
from .loop import LoopOptions, run_loop
from .records import RunLog
from .schedule import build_scheduler
from .specialists import confusable_pairs, given_pairs, train_specialist


def crop_autocast(precision: str = "auto", size: int = 64) -> bool:
    """Whether the crop classifiers of ``size`` px crops train under bfloat16 autocast: ``"bfloat16"`` yes,
    ``"float32"`` no, ``"auto"`` where the CPU has bfloat16 units (:func:`dpsnet.device.native_bf16`; on an
    Intel Xeon with AMX tiles a step of 64 crops of 64 px takes 29 ms instead of 46) and the crops are at least
    32 px: the last stage's stride-2 convolution sees ``size / 8`` px, and for a 2x2 input oneDNN's channels-last
    bfloat16 convolution returns NaN weight gradients (16 px crops, on that Xeon and on an AMD EPYC with
    AVX512-BF16 alike)."""
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision should be auto, float32 or bfloat16, got {precision!r}")
    if precision == "auto":
        return size >= 32 and native_bf16(torch.device("cpu"))
    return precision == "bfloat16"


@torch.no_grad()
def rotation_probs(model: CropClassifier, crops: np.ndarray, batch: int = 256) -> Tensor:
    """Class probabilities [N, classes] of uint8 crops [N, S, S, 3], averaged over their four 90-degree rotations
    (as :class:`dpsnet.inference.CropRescorer` classifies detections)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(crops), batch):
        x = torch.from_numpy(crops[i:i + batch]).permute(0, 3, 1, 2).float() / 255
        out.append(torch.stack([torch.softmax(model(torch.rot90(x, k, (2, 3))), 1) for k in range(4)]).mean(0))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.fc.out_features)


def _share(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if len(hits) else None


def _batches(crops: np.ndarray, labels: np.ndarray, pool: np.ndarray, batch_size: int, rng: np.random.Generator,
             camera: float) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        idx = rng.choice(pool, size=batch_size, replace=len(pool) < batch_size)
        x = augment_crops(crops[idx], rng, camera=camera).contiguous(memory_format=torch.channels_last)
        yield x, torch.from_numpy(labels[idx])


def _train_generalist(crops, labels, train_idx, num_classes, rng, *, channels, norm, steps, batch_size, lr,
                      camera, bf16, time_limit_min, log) -> tuple[CropClassifier, int, float]:
    """The SKU classifier on the training crops: ``(model, steps done, accuracy on its augmented batches)``."""
    # Channels-last (oneDNN's layout): a step of 64 crops of 64 px about 12% faster.
    model = CropClassifier(num_classes, tuple(channels), norm).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = build_scheduler(optimizer, max_steps=steps, warmup_steps=min(50, steps // 10), schedule="cosine")
    right = [0, 0]  # correct, seen

    def losses_of(batch):
        x, y = batch
        logits = model(x).float()
        right[0] += int((logits.argmax(1) == y).sum())
        right[1] += len(y)
        return {"loss_classifier": F.cross_entropy(logits, y, label_smoothing=0.1)}

    options = LoopOptions(max_steps=steps, autocast="cpu" if bf16 else None, time_limit_s=time_limit_min * 60,
                          log=log, log_every=50, label="pretrain", unit="crops", items_per_step=batch_size,
                          extra=lambda: {"train_acc": right[0] / max(right[1], 1)},
                          hint="; run again with --precision float32" if bf16 else "; lower --lr")
    model.train()
    done = run_loop(model, optimizer, scheduler, _batches(crops, labels, train_idx, batch_size, rng, camera),
                    losses_of, options)
    return model, done, right[0] / max(right[1], 1)


def _train_specialists(model: CropClassifier, crops, labels, hold, train_idx, hold_probs, given, category_ids, *,
                       channels, norm, steps, batch_size, lr, seed, camera, bf16, min_rate, max_pairs, echo
                       ) -> tuple[list[tuple[list[int], CropClassifier]], list[dict]]:
    """A specialist for each given pair, then each pair confused on the held-out crops: the classifiers and what
    each does within its pair on the held-out crops (generalist vs specialist)."""
    hold_named = hold_probs.argmax(1).numpy()
    pairs = confusable_pairs(labels[hold], hold_named, len(category_ids), min_rate=min_rate, max_pairs=max_pairs,
                             first=given)
    if echo:
        print(f"pair specialists: {len(pairs)} pair(s) ({len(given)} given, {len(pairs) - len(given)} confused "
              f"on the held-out crops), {steps} steps each", flush=True)
    specialists, rows = [], []
    for k, (a, b, rate) in enumerate(pairs):
        spec = train_specialist(crops[train_idx], labels[train_idx], (a, b), model.body.state_dict(),
                                channels=tuple(channels), norm=norm, steps=steps, batch_size=batch_size, lr=lr,
                                seed=seed + 1 + k, camera=camera, bf16=bf16, label=f"specialist {k + 1}/{len(pairs)}",
                                log=RunLog(enabled=echo, echo=echo))
        in_pair = np.isin(labels[hold], (a, b))
        pair_labels = labels[hold][in_pair]
        within = hold_probs[in_pair][:, [a, b]].argmax(1).numpy()
        spec_named = rotation_probs(spec, crops[hold][in_pair]).argmax(1).numpy()
        row = {"categories": [category_ids[a], category_ids[b]], "confusion_rate": rate,
               "holdout_crops": int(in_pair.sum()),  # the accuracies are None when the pair has none held out
               "holdout_generalist": _share(np.array([a, b])[within] == pair_labels),
               "holdout_specialist": _share(np.array([a, b])[spec_named] == pair_labels)}
        rows.append(row)
        specialists.append(([int(a), int(b)], spec))
        if echo:
            result = (f"(confused on {rate:.1%} of their held-out crops): right within the pair "
                      f"{row['holdout_generalist']:.1%} -> {row['holdout_specialist']:.1%}") if row["holdout_crops"] \
                else "(no held-out crops of the pair to measure it on)"
            print(f"specialist {k + 1}/{len(pairs)}: SKUs {row['categories'][0]} / {row['categories'][1]} {result}",
                  flush=True)
    return specialists, rows


def pretrain_backbone(instances: str | Path, images: str | Path, out: str | Path, *, size: int = 64,
                      channels: tuple[int, ...] = (32, 64, 128, 256), norm: str = "batch", steps: int = 3000,
                      batch_size: int = 64, lr: float = 0.05, seed: int = 0, holdout: float = 0.1,
                      camera: float = 0.5, time_limit_min: float = 0.0, specialist_steps: int = 0,
                      specialist_min_rate: float = 0.05, max_specialists: int = 8,
                      specialist_pairs: Sequence[Sequence[int]] = (), precision: str = "auto",
                      echo: bool = True) -> dict:
    """Train the small body to classify product crops into SKUs; write the classifier to ``out`` (its body under
    ``model``, loadable as ``model.backbone_weights``), ``out``.json (the summary), and the run's
    ``out``.results.csv and ``out``.results.png (loss and training accuracy by step).

    With ``specialist_steps`` > 0, the pairs of SKUs that the classifier mixes up on the held-out crops
    (:func:`dpsnet.training.specialists.confusable_pairs` with ``specialist_min_rate``, at most
    ``max_specialists``) each get a two-class specialist started from the trained body and trained on that pair's
    crops only (balanced); ``specialist_pairs`` (category ids, e.g. a catalogue's look-alikes) get one first,
    confused or not. ``precision``: ``"auto"`` (see :func:`crop_autocast`), ``"float32"`` or ``"bfloat16"``. A
    loss that stops being finite raises, naming the step.

    Returns ``{"steps", "seconds", "train_acc", "holdout_acc", "classes", ...}`` (with ``specialists``: each
    pair's categories, confusion rate and held-out accuracy within the pair, generalist vs specialist).
    """
    if specialist_steps < 0 or max_specialists < 0 or not 0 < specialist_min_rate <= 1:
        raise ValueError("specialist_steps and max_specialists should be >= 0 and specialist_min_rate in (0, 1], got "
                         f"{specialist_steps}, {max_specialists}, {specialist_min_rate}")
    bf16 = crop_autocast(precision, size)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    crops, labels, category_ids = exemplar_crops(instances, images, size)
    given = given_pairs(specialist_pairs, category_ids, instances)
    order = rng.permutation(len(crops))
    n_hold = int(len(crops) * holdout)
    hold, train_idx = order[:n_hold], order[n_hold:]
    missing = sorted({c for pair in given for c in pair} - set(labels[train_idx].tolist()))
    if missing:
        raise ValueError(f"specialist pair with category {category_ids[missing[0]]}: {instances} has no box of it "
                         "to train on (outside the held-out share)")
    started = time.monotonic()
    table = Path(f"{out}.results.csv")
    table.parent.mkdir(parents=True, exist_ok=True)  # the weights' folder: the log rows come before the weights
    table.unlink(missing_ok=True)
    log = RunLog(table=table, curves=Path(f"{out}.results.png"), echo=echo)
    model, step, train_acc = _train_generalist(
        crops, labels, train_idx, len(category_ids), rng, channels=channels, norm=norm, steps=steps,
        batch_size=batch_size, lr=lr, camera=camera, bf16=bf16, time_limit_min=time_limit_min, log=log)
    log.draw()
    model.eval()
    hold_probs = rotation_probs(model, crops[hold])
    hold_acc = float((hold_probs.argmax(1).numpy() == labels[hold]).mean()) if n_hold else float("nan")
    summary = {"steps": step, "seconds": time.monotonic() - started, "train_acc": train_acc,
               "holdout_acc": hold_acc, "classes": len(category_ids), "crops": len(crops), "size": size,
               "camera": camera, "precision": "bfloat16 autocast" if bf16 else "float32"}
    specialists = []
    if specialist_steps and n_hold:
        summary["specialist_steps"] = specialist_steps
        specialists, summary["specialists"] = _train_specialists(
            model, crops, labels, hold, train_idx, hold_probs, given, category_ids, channels=channels, norm=norm,
            steps=specialist_steps, batch_size=batch_size, lr=lr, seed=seed, camera=camera, bf16=bf16,
            min_rate=specialist_min_rate, max_pairs=max_specialists, echo=echo)
        summary["seconds"] = time.monotonic() - started
    elif specialist_steps and echo:
        print("pair specialists: none trained (no held-out crops to find confused pairs on; raise holdout)", flush=True)
    saved = CropClassifierFile(model, list(category_ids), size, specialists)
    save_checkpoint(saved.state(summary), out)
    Path(str(out) + ".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
