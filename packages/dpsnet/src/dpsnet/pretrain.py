"""Backbone pretraining on exemplar crops as SKU classification: ImageNet weights' stand-in on the mini world.

Each exemplar photo's box is cropped (with a margin), resized to ``size`` x ``size`` and classified into its SKU
with the small body + a linear layer; flips, 90-degree rotations, scale and colour jitter stand in for the
poses and lighting of checkout images. The body's weights go to a file that ``model.backbone_weights`` loads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rpc_metrics.io import image_path, read_instances

from .backbone import SmallBody
from .data import camera_shot, jitter_map, read_image
from .engine import lr_factor, save_checkpoint


def exemplar_crops(instances: str | Path, images: str | Path, size: int, margin: float = 0.1, min_side: float = 8.0
                   ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(crops uint8[N, size, size, 3] RGB, labels int64[N], category_ids)``: a square crop around every box
    (``iscrowd: 0``, sides >= ``min_side`` px): one per exemplar photo of RPC, or every product of synthesized
    checkout images, which show them as the checkout camera does (rotated, occluded, at checkout scale)."""
    dataset = read_instances(instances)
    category_ids = sorted(c["id"] for c in dataset["categories"])
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    boxes: dict[int, list] = {}
    for ann in dataset["annotations"]:
        if not ann.get("iscrowd", 0) and min(ann["bbox"][2:]) >= min_side:
            boxes.setdefault(ann["image_id"], []).append(ann)
    crops, labels = [], []
    for im in sorted(dataset["images"], key=lambda im: im["id"]):
        if im["id"] not in boxes:
            continue
        image = read_image(image_path(images, im["file_name"], source=str(instances)))
        for ann in boxes[im["id"]]:
            x, y, w, h = ann["bbox"]
            side = max(w, h) * (1 + 2 * margin)
            cx, cy = x + w / 2, y + h / 2
            x1, y1 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            x2, y2 = int(min(image.shape[1], cx + side / 2)), int(min(image.shape[0], cy + side / 2))
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            crop = cv2.resize(image[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)
            crops.append((crop * 255).round().astype(np.uint8))
            labels.append(label_of[ann["category_id"]])
    if not crops:
        raise ValueError(f"{instances}: no boxes to crop")
    return np.stack(crops), np.array(labels, dtype=np.int64), category_ids


def draw_crop_params(rng: np.random.Generator, n: int, size: int, scale: tuple[float, float] = (0.6, 1.0),
                     camera: float = 0.0) -> dict[str, np.ndarray]:
    """The random choices of :func:`augment_crops` for ``n`` crops of ``size`` px, drawn at once: the zoomed-out
    side and its place on a grey canvas, 90-degree turns and a horizontal flip of the product, colour jitter
    factors (0.3 each), and for the share ``camera`` of the crops the camera effects of
    :func:`dpsnet.data.camera_effects` (cast, blur, noise level, JPEG quality; the noise itself from ``seed``).
    ``camera=0`` draws nothing for them."""
    small = np.maximum(4, np.round(size * rng.uniform(*scale, size=n)).astype(np.int64))
    params = {"small": small, "grey": rng.uniform(0.3, 0.9, size=n),
              "ox": rng.integers(0, size - small + 1), "oy": rng.integers(0, size - small + 1),
              "turns": rng.integers(0, 4, size=n), "flip": rng.random(n) < 0.5,
              "jitter": rng.uniform(0.7, 1.3, size=(n, 3))}  # brightness, contrast, saturation factors
    camera_on = rng.random(n) < camera if camera else np.zeros(n, dtype=bool)
    m = int(camera_on.sum())
    params.update(camera=camera_on, gain=rng.uniform(0.85, 1.15, size=(m, 3)), sigma=rng.uniform(0.0, 1.2, size=m),
                  noise=rng.uniform(0.0, 6.0, size=m) / 255.0, quality=rng.integers(60, 96, size=m),
                  seed=rng.integers(0, 2**62, size=1) if m else np.zeros(0, dtype=np.int64))
    return params


def apply_crop_params(crops: np.ndarray, params: dict[str, np.ndarray]) -> Tensor:
    """uint8 crops [B, S, S, 3] -> float32 Tensor[B, S, S, 3] in [0, 1], augmented as ``params`` says: each
    crop resized, turned, flipped and pasted on its grey canvas; then colour jitter (:func:`dpsnet.data.jitter_map`,
    one affine colour map per crop), and on the crops chosen for them :func:`dpsnet.data.camera_shot` (a colour
    cast, defocus, sensor noise and JPEG compression). Whole-batch operations, one OpenCV call per crop only for
    the resize, the blur and the JPEG round trip."""
    n, size = len(crops), crops.shape[1]
    images = crops.astype(np.float32) * np.float32(1 / 255)
    canvas = np.empty_like(images)
    canvas[:] = params["grey"].astype(np.float32)[:, None, None, None]
    for i, (small, ox, oy, turns, flip) in enumerate(zip(params["small"], params["ox"], params["oy"],
                                                         params["turns"], params["flip"], strict=True)):
        patch = np.rot90(cv2.resize(images[i], (int(small), int(small)), interpolation=cv2.INTER_AREA), turns)
        canvas[i, oy:oy + small, ox:ox + small] = patch[:, ::-1] if flip else patch
    # dpsnet.data.colour_jitter's three steps as one affine colour map per crop, applied batch-wide.
    b, c, s = (params["jitter"][:, k] for k in range(3))
    matrix, offset = jitter_map(b, c, s, canvas.reshape(n, -1).mean(axis=1, dtype=np.float64))
    out = torch.bmm(torch.from_numpy(canvas).reshape(n, -1, 3), torch.from_numpy(matrix).transpose(1, 2).float())
    out = out.add_(torch.from_numpy(offset).float()[:, None, None]).clamp_(0.0, 1.0).reshape(n, size, size, 3)
    cam = np.flatnonzero(params["camera"])
    if len(cam):
        noise = torch.randn((len(cam), size, size, 3), generator=torch.Generator().manual_seed(int(params["seed"][0])))
        noise = noise.mul_(torch.from_numpy(params["noise"]).float()[:, None, None, None]).numpy()
        shots = camera_shot(out[cam].numpy(), params["gain"], params["sigma"], noise, params["quality"])
        out[cam] = torch.from_numpy(shots)
    return out


def augment_crops(crops: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.6, 1.0),
                  camera: float = 0.0) -> Tensor:
    """A batch of uint8 crops [B, S, S, 3] -> float Tensor[B, 3, S, S] (channels-last memory): random zoom-out,
    flips, rot90, colour; with probability ``camera`` each crop also gets the camera effects (cast, blur, noise,
    JPEG) of :func:`dpsnet.data.camera_effects`. The choices come from :func:`draw_crop_params`."""
    params = draw_crop_params(rng, len(crops), crops.shape[1], scale, camera)
    return apply_crop_params(crops, params).permute(0, 3, 1, 2)


class CropClassifier(nn.Module):
    """The small body, global average pooling and a linear SKU classifier."""

    def __init__(self, num_classes: int, channels: tuple[int, ...] = (32, 64, 128, 256), norm: str = "batch"):
        super().__init__()
        self.body = SmallBody(channels, norm)
        self.fc = nn.Linear(channels[-1], num_classes)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body.pooled_features((x - self.mean) / self.std))


def crop_autocast(precision: str = "auto", size: int = 64) -> bool:
    """Whether the crop classifiers of ``size`` px crops train under bfloat16 autocast: ``"bfloat16"`` yes,
    ``"float32"`` no, ``"auto"`` where the CPU has bfloat16 units (:func:`dpsnet.inference.native_bf16`; on an
    Intel Xeon with AMX tiles a step of 64 crops of 64 px takes 29 ms instead of 46) and the crops are at least
    32 px: the last stage's stride-2 convolution sees ``size / 8`` px, and for a 2x2 input oneDNN's channels-last
    bfloat16 convolution returns NaN weight gradients (16 px crops, on that Xeon and on an AMD EPYC with
    AVX512-BF16 alike)."""
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision should be auto, float32 or bfloat16, got {precision!r}")
    if precision == "auto":
        from .inference import native_bf16

        return size >= 32 and native_bf16(torch.device("cpu"))
    return precision == "bfloat16"


def _finite(loss: Tensor, step: int, bf16: bool) -> Tensor:
    if not torch.isfinite(loss):
        hint = "; run again with --precision float32" if bf16 else "; lower --lr"
        raise FloatingPointError(f"crop classifier loss is {loss.item()} at step {step + 1}"
                                 f"{' under bfloat16 autocast' if bf16 else ''}{hint}")
    return loss


def pretrain_backbone(instances: str | Path, images: str | Path, out: str | Path, *, size: int = 64,
                      channels: tuple[int, ...] = (32, 64, 128, 256), norm: str = "batch", steps: int = 3000,
                      batch_size: int = 64, lr: float = 0.05, seed: int = 0, holdout: float = 0.1,
                      camera: float = 0.5, time_limit_min: float = 0.0, specialist_steps: int = 0,
                      specialist_min_rate: float = 0.05, max_specialists: int = 8,
                      specialist_pairs: Sequence[Sequence[int]] = (), precision: str = "auto",
                      echo: bool = True) -> dict:
    """Train the small body to classify exemplar crops into SKUs; write its weights to ``out`` (a checkpoint
    with ``model`` = the body's state dict, loadable as ``model.backbone_weights``) and ``out``.json (accuracy).

    With ``specialist_steps`` > 0, the pairs of SKUs that the classifier mixes up on the held-out crops
    (:func:`confusable_pairs` with ``specialist_min_rate``, at most ``max_specialists``) each get a specialist: a
    two-class classifier started from the trained body and trained on that pair's crops only (balanced), which
    learns the detail that tells them apart (look-alike SKUs) where the generalist, spread over every class,
    learned colours first. They go to the same file, and :class:`dpsnet.reclassify.CropRescorer` splits the
    generalist's probability of a pair between its two SKUs by its specialist's opinion. ``specialist_pairs``
    (category ids, e.g. the look-alikes a store's catalogue lists) get one first, confused on the held-out crops or
    not, every one of them; the confused pairs then fill up to ``max_specialists``, skipping SKUs already in a
    pair.

    ``precision``: ``"auto"`` (bfloat16 autocast on a CPU with bfloat16 units for crops of 32 px or more,
    float32 elsewhere: see :func:`crop_autocast`), ``"float32"`` or ``"bfloat16"``. A loss that stops being finite raises, naming the
    step.

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
    given = _given_pairs(specialist_pairs, category_ids, instances)
    order = rng.permutation(len(crops))
    n_hold = int(len(crops) * holdout)
    hold, train_idx = order[:n_hold], order[n_hold:]
    missing = sorted({c for pair in given for c in pair} - set(labels[train_idx].tolist()))
    if missing:
        raise ValueError(f"specialist pair with category {category_ids[missing[0]]}: {instances} has no box of it "
                         "to train on (outside the held-out share)")
    # Channels-last (oneDNN's layout): a step of 64 crops of 64 px about 12% faster.
    model = CropClassifier(len(category_ids), tuple(channels), norm).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    started = time.monotonic()
    step, correct, seen = 0, 0, 0
    model.train()

    while step < steps:
        idx = rng.choice(train_idx, size=batch_size, replace=len(train_idx) < batch_size)
        x = augment_crops(crops[idx], rng, camera=camera).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels[idx])
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, max_steps=steps, warmup_steps=min(50, steps // 10), schedule="cosine")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss = _finite(F.cross_entropy(logits, y, label_smoothing=0.1), step, bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if echo and (step % 50 == 0 or step == steps):
            print(f"pretrain step {step}/{steps} loss {loss.item():.3f} train acc {correct / seen:.3f}", flush=True)
        if time_limit_min and time.monotonic() - started > time_limit_min * 60:
            break
    train_acc = correct / max(seen, 1)
    model.eval()
    hold_probs = rotation_probs(model, crops[hold])
    hold_named = hold_probs.argmax(1).numpy()
    hold_acc = float((hold_named == labels[hold]).mean()) if n_hold else float("nan")
    summary = {"steps": step, "seconds": time.monotonic() - started, "train_acc": train_acc,
               "holdout_acc": hold_acc, "classes": len(category_ids), "crops": len(crops), "size": size,
               "camera": camera, "precision": "bfloat16 autocast" if bf16 else "float32"}
    specialists, spec_summary = [], []
    if specialist_steps and n_hold:
        pairs = confusable_pairs(labels[hold], hold_named, len(category_ids), min_rate=specialist_min_rate,
                                 max_pairs=max_specialists, first=given)
        if echo:
            print(f"pair specialists: {len(pairs)} pair(s) ({len(given)} given, {len(pairs) - len(given)} confused "
                  f"on the held-out crops), {specialist_steps} steps each", flush=True)
        for k, (a, b, rate) in enumerate(pairs):
            spec = train_specialist(crops[train_idx], labels[train_idx], (a, b), model.body.state_dict(),
                                    channels=tuple(channels), norm=norm, steps=specialist_steps,
                                    batch_size=batch_size, lr=lr, seed=seed + 1 + k, camera=camera, bf16=bf16)
            in_pair = np.isin(labels[hold], (a, b))
            pair_labels = labels[hold][in_pair]
            within = hold_probs[in_pair][:, [a, b]].argmax(1).numpy()
            spec_named = rotation_probs(spec, crops[hold][in_pair]).argmax(1).numpy()
            row = {"categories": [category_ids[a], category_ids[b]], "confusion_rate": rate,
                   "holdout_crops": int(in_pair.sum()),  # the accuracies are None when the pair has none held out
                   "holdout_generalist": _share(np.array([a, b])[within] == pair_labels),
                   "holdout_specialist": _share(np.array([a, b])[spec_named] == pair_labels)}
            spec_summary.append(row)
            specialists.append({"classes": [int(a), int(b)], "model": spec.body.state_dict(),
                                "fc": spec.fc.state_dict()})
            if echo:
                if row["holdout_crops"]:
                    result = (f"(confused on {rate:.1%} of their held-out crops): right within the pair "
                              f"{row['holdout_generalist']:.1%} -> {row['holdout_specialist']:.1%}")
                else:
                    result = "(no held-out crops of the pair to measure it on)"
                print(f"specialist {k + 1}/{len(pairs)}: SKUs {row['categories'][0]} / {row['categories'][1]} "
                      f"{result}", flush=True)
        summary["specialist_steps"] = specialist_steps
        summary["specialists"] = spec_summary
        summary["seconds"] = time.monotonic() - started
    elif specialist_steps and echo:
        print("pair specialists: none trained (no held-out crops to find confused pairs on; raise holdout)", flush=True)
    # ``fc`` and ``category_ids`` make the file a whole crop classifier too (see dpsnet.reclassify.CropRescorer.from_file)
    save_checkpoint({"model": model.body.state_dict(), "fc": model.fc.state_dict(), "category_ids": list(category_ids),
                     "channels": list(channels), "norm": norm, "size": size, "summary": summary,
                     "specialists": specialists}, out)
    Path(str(out) + ".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


@torch.no_grad()
def rotation_probs(model: CropClassifier, crops: np.ndarray, batch: int = 256) -> Tensor:
    """Class probabilities [N, classes] of uint8 crops [N, S, S, 3], averaged over their four 90-degree rotations
    (as :class:`dpsnet.reclassify.CropRescorer` classifies detections)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(crops), batch):
        x = torch.from_numpy(crops[i:i + batch]).permute(0, 3, 1, 2).float() / 255
        out.append(torch.stack([torch.softmax(model(torch.rot90(x, k, (2, 3))), 1) for k in range(4)]).mean(0))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.fc.out_features)


def _given_pairs(pairs: Sequence[Sequence[int]], category_ids: Sequence[int], source) -> list[tuple[int, int]]:
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


def _share(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if len(hits) else None


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


def train_specialist(crops: np.ndarray, labels: np.ndarray, classes: tuple[int, ...], body_state: dict, *,
                     channels: tuple[int, ...], norm: str, steps: int, batch_size: int, lr: float, seed: int,
                     camera: float, bf16: bool = False) -> CropClassifier:
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
    per_class = max(1, batch_size // len(classes))
    target = torch.arange(len(classes)).repeat_interleave(per_class)
    model.train()
    for step in range(steps):
        idx = np.concatenate([rng.choice(m, size=per_class) for m in members])
        x = augment_crops(crops[idx], rng, camera=camera).contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, max_steps=steps, warmup_steps=min(20, steps // 10), schedule="cosine")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss = _finite(F.cross_entropy(logits, target, label_smoothing=0.1), step, bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()
