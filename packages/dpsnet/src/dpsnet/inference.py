"""Inference: load a checkpoint, predict a pool (COCO results + counts file), count accuracy, visualisation."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from rpc_metrics.io import (
    read_instances,
    read_pool,
    validate_counts,
    validate_results,
    write_counts,
    write_results,
)

from .config import LEGACY
from .data import CategoryMap, InstancesDataset, collate
from .distributed import DistInfo, dist_info, gather_lists, init_distributed
from .model import DPSNet, dpsnet_model


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict, loaded with ``weights_only=True``; a missing file raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(checkpoint: Mapping | str | Path, device: str | torch.device = "cpu",
                          **overrides) -> tuple[DPSNet, CategoryMap]:
    """Rebuild the model a checkpoint was trained as (its ``model_kwargs``, ``overrides`` on top), in eval mode."""
    ckpt = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    categories = CategoryMap(**ckpt["categories"])
    legacy = {key.removeprefix("model."): value for key, value in LEGACY.items() if key.startswith("model.")}
    kwargs = {**legacy, **ckpt["model_kwargs"], "backbone_weights": None, **overrides}
    model = dpsnet_model(categories.num_classes, categories.count_class_of_label,
                         num_count_classes=len(categories.count_names), **kwargs)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), categories


def detections_to_results(det: Mapping[str, torch.Tensor], image_id: int, categories: CategoryMap) -> list[dict]:
    """One image's detections as COCO results (``bbox`` [x, y, w, h], category ids from the category map)."""
    boxes = det["boxes"].detach().float().cpu().numpy()
    labels = det["labels"].cpu().numpy()
    scores = det["scores"].detach().float().cpu().numpy()
    return [{"image_id": int(image_id), "category_id": int(categories.category_ids[int(lab) - 1]),
             "bbox": [round(float(b[0]), 2), round(float(b[1]), 2), round(float(b[2] - b[0]), 2),
                      round(float(b[3] - b[1]), 2)],
             "score": round(float(s), 5)}
            for b, lab, s in zip(boxes, labels, scores, strict=True)]


def counts_entry(counts: torch.Tensor, image_id: int, categories: CategoryMap, min_count: float = 1e-3) -> dict:
    """One image of the counts file: its classes with an integral of at least ``min_count`` (unrounded)."""
    values = counts.detach().float().cpu().numpy()
    return {"image_id": int(image_id),
            "counts": {name: round(float(v), 4) for name, v in zip(categories.count_names, values, strict=True)
                       if v >= min_count}}


@torch.no_grad()
def predict(model: DPSNet, dataset: InstancesDataset, categories: CategoryMap, *, batch_size: int = 4,
            device: str | torch.device = "cpu", indices: Sequence[int] | None = None,
            progress: Callable[[int, int], None] | None = None, amp: bool = False) -> tuple[list[dict], list[dict]]:
    """Run ``model`` over ``dataset`` (or the ``indices`` of it) in batches; with ``amp``, under bfloat16
    autocast where the device computes it natively (:func:`native_bf16`; boxes still decode in float32).

    Returns ``(results, count_images)``: COCO detections and the ``images`` entries of the counts file.
    """
    was_training = model.training
    model.eval()
    indices = list(range(len(dataset))) if indices is None else list(indices)
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and native_bf16(device))
    results, count_images = [], []
    for start in range(0, len(indices), batch_size):
        images, targets = collate([dataset[i] for i in indices[start:start + batch_size]])
        with autocast:
            outputs = model([img.to(device) for img in images])
        for out, target in zip(outputs, targets, strict=True):
            results += detections_to_results(out, target["image_id"], categories)
            count_images.append(counts_entry(out["counts"], target["image_id"], categories))
        if progress is not None:
            progress(min(start + batch_size, len(indices)), len(indices))
    model.train(was_training)
    return results, count_images


class _ProgressLine:
    """``predict: done/total images``: one updating line on a terminal; in a log (not a TTY), a line per quarter
    of the work and one at the end, so that logs do not run the updates together."""

    def __init__(self) -> None:
        self.last_quarter = 0

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\rpredict: {done}/{total} images" + ("\n" if done == total else ""))
        else:
            quarter = 4 * done // max(total, 1)
            if quarter > self.last_quarter or done == total:
                self.last_quarter = max(quarter, self.last_quarter)
                sys.stderr.write(f"predict: {done}/{total} images\n")
        sys.stderr.flush()


def predict_files(checkpoint: str | Path, instances: str | Path, images: str | Path, out_results: str | Path,
                  out_counts: str | Path, *, batch_size: int = 4, device: str = "auto", score_thresh: float | None = None,
                  agnostic_nms: float | None = None, test_flips: str | None = None,
                  test_flip_iou: float | None = None, reclassifier: str | Path | None = None,
                  reclassifier_power: float = 0.5, progress: bool = True, amp: bool = True) -> tuple[Path, Path]:
    """Predict every image of a pool (or instances) JSON and write the COCO results and the counts file.

    ``score_thresh``, ``agnostic_nms`` (``model.box_agnostic_nms_thresh``), ``test_flips`` and ``test_flip_iou``
    (``model.test_flips``, ``model.test_flip_iou``) replace the checkpoint's values. ``reclassifier``: a
    ``dpsnet pretrain`` file whose crop classifier re-scores the detections (:mod:`dpsnet.reclassify`, with
    ``reclassifier_power``). ``amp``: bfloat16 autocast where the device computes it natively (CUDA, CPUs with
    AMX or AVX512-BF16; :func:`native_bf16`), about 1.3x faster there.
    Under ``torchrun`` each rank predicts its share and rank 0 writes. Both files are validated with
    ``rpc_metrics.io`` against the pool before they are (atomically) written.
    """
    dev = resolve_device(device, dist_info())
    info = init_distributed(dev)
    overrides = {} if score_thresh is None else {"box_score_thresh": score_thresh}
    if agnostic_nms is not None:
        overrides["box_agnostic_nms_thresh"] = agnostic_nms
    if test_flips is not None:
        overrides["test_flips"] = test_flips
    if test_flip_iou is not None:
        overrides["test_flip_iou"] = test_flip_iou
    model, categories = model_from_checkpoint(checkpoint, dev, **overrides)
    if reclassifier is not None:
        from .reclassify import CropRescorer

        model.set_rescorer(CropRescorer.from_file(reclassifier, categories.category_ids, power=reclassifier_power))
    pool = read_pool(instances)
    dataset = InstancesDataset(pool, images, categories)
    dataset.source = str(instances)
    shard = list(range(info.rank, len(dataset), info.world_size))
    results, count_images = predict(model, dataset, categories, batch_size=batch_size, device=dev, indices=shard,
                                    progress=_ProgressLine() if progress and info.rank == 0 else None, amp=amp)
    results, count_images = gather_lists(results, info), gather_lists(count_images, info)
    if info.rank == 0:
        counts = {"count_classes": categories.count_classes,
                  "images": sorted(count_images, key=lambda e: e["image_id"])}
        validate_results(results, source=str(out_results), gt=pool)
        validate_counts(counts, source=str(out_counts), pool=pool)
        write_results(results, out_results)
        write_counts(counts, out_counts)
    return Path(out_results), Path(out_counts)


def resolve_device(device: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` -> the local CUDA device when there is one, else CPU; anything else as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank if info else 0)
        return torch.device("cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively, where mixed precision pays: a CUDA GPU with bfloat16
    support, or a CPU with bfloat16 instructions, on which oneDNN runs bfloat16 convolutions and matrix
    products: AMX tiles (Intel Xeon 4th generation and newer) or AVX512-BF16 (AMD Zen 4 and newer, Intel
    Cooper Lake). A 2-core AMD EPYC with AVX512-BF16 trains ``cpu-small`` at 28.8 images/s under autocast
    against 20.8 in float32. Elsewhere a CPU emulates bfloat16, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_bf16_units())


def cpu_bf16_units() -> list[str]:
    """The bfloat16 units of this CPU that torch reports (``AMX``, ``AVX512-BF16``); empty on other CPUs and on a
    torch too old to tell."""
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    return [name for name, probe in probes if getattr(torch.cpu, probe, lambda: False)()]


def _half_up(value: float) -> int:
    return math.floor(float(value) + 0.5)


def count_accuracy(counts: Mapping, gt: Mapping | str | Path, *, total: bool = False) -> float:
    """Fraction of ground-truth images whose rounded counts (counting view alone) equal the true counts for
    every class (``total``: the rounded sum over classes equals the number of objects); ``iscrowd`` annotations
    are not counted. Counts are rounded half up, as kd-loop's agreement check rounds them (Python's ``round``
    would send 2.5 to 2)."""
    gt = read_instances(gt)
    categories = CategoryMap.from_categories(gt["categories"], counts["count_classes"])
    key_of = {cid: categories.count_names[categories.count_class_of_label[i + 1]]
              for i, cid in enumerate(categories.category_ids)}
    truth: dict[int, dict[str, int]] = {im["id"]: {} for im in gt["images"]}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            key = key_of[ann["category_id"]]
            truth[ann["image_id"]][key] = truth[ann["image_id"]].get(key, 0) + 1
    if total:
        predicted_total = {e["image_id"]: _half_up(sum(e["counts"].values())) for e in counts["images"]}
        right = sum(predicted_total.get(i, 0) == sum(true.values()) for i, true in truth.items())
        return right / max(len(truth), 1)
    predicted = {e["image_id"]: {k: n for k, n in ((k, _half_up(v)) for k, v in e["counts"].items()) if n > 0}
                 for e in counts["images"]}
    right = sum(predicted.get(image_id, {}) == true for image_id, true in truth.items())
    return right / max(len(truth), 1)


def count_error(counts: Mapping, gt: Mapping | str | Path) -> dict[str, float]:
    """The counting view's error on each image's total, before rounding: ``{"mae": mean |predicted - true|,
    "bias": mean (predicted - true)}`` in objects per image, over the ground truth's images (an image missing
    from ``counts`` predicts 0; ``iscrowd`` annotations are not counted)."""
    gt = read_instances(gt)
    ids = [im["id"] for im in gt["images"]]
    if not ids:
        return {"mae": 0.0, "bias": 0.0}
    row = {image_id: i for i, image_id in enumerate(ids)}
    true = np.zeros(len(ids))
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in gt["annotations"]], dtype=bool)
    owners = np.array([row[a["image_id"]] for a in gt["annotations"]], dtype=np.int64)
    np.add.at(true, owners[~crowd], 1.0)
    predicted = np.zeros(len(ids))
    for entry in counts["images"]:
        if entry["image_id"] in row:
            predicted[row[entry["image_id"]]] = sum(entry["counts"].values())
    diff = predicted - true
    return {"mae": float(np.abs(diff).mean()), "bias": float(diff.mean())}


def draw(image: np.ndarray, det: Mapping[str, torch.Tensor], categories: CategoryMap, score_thresh: float) -> np.ndarray:
    """BGR uint8 picture: the density map (all classes summed) as a heat overlay, then boxes, labels, scores."""
    h, w = image.shape[:2]
    picture = (image[:, :, ::-1] * 255).astype(np.uint8).copy()
    if "density" in det:
        density = det["density"].sum(dim=0).cpu().numpy()
        heat = cv2.resize(density / max(float(density.max()), 1e-6), (w, h), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
        picture = cv2.addWeighted(picture, 0.6, heat, 0.4, 0)
    for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist(), strict=True):
        if score < score_thresh:
            continue
        x1, y1, x2, y2 = (round(v) for v in box)
        cv2.rectangle(picture, (x1, y1), (x2, y2), (0, 255, 0), 1)
        name = categories.category_names[label - 1] or str(categories.category_ids[label - 1])
        cv2.putText(picture, f"{name} {score:.2f}", (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                    (255, 255, 255), 1, cv2.LINE_AA)
    total = float(det["counts"].sum())
    cv2.putText(picture, f"count {total:.1f}", (2, h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return picture


@torch.no_grad()
def visualize_files(checkpoint: str | Path, instances: str | Path, images: str | Path, out_dir: str | Path, *,
                    limit: int = 16, score_thresh: float = 0.5, device: str = "auto") -> list[Path]:
    """Write ``out_dir/<image_id>.png`` for the first ``limit`` images: boxes, labels, scores, density overlay."""
    dev = resolve_device(device)
    model, categories = model_from_checkpoint(checkpoint, dev)
    model.return_density = True
    dataset = InstancesDataset(read_pool(instances), images, categories)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(limit, len(dataset))):
        image, target = dataset[i]
        det = model([image.to(dev)])[0]
        path = out_dir / f"{target['image_id']}.png"
        if not cv2.imwrite(str(path), draw(image.permute(1, 2, 0).numpy(), det, categories, score_thresh)):
            raise OSError(f"could not write {path}")
        written.append(path)
    return written
