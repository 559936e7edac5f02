"""Prediction: run a model over a dataset and write the COCO results JSON and the counts file of a pool."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from rpc_metrics.io import read_pool, validate_counts, validate_results, write_counts, write_results

from ..checkpoint import model_from_checkpoint
from ..data import CategoryMap, InstancesDataset, collate
from ..device import native_bf16, resolve_device
from ..distributed import dist_info, gather_lists, init_distributed
from ..model import DPSNet
from ..progress import Progress
from .rescore import CropRescorer


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
def run_model(model: DPSNet, images: Sequence[torch.Tensor], *, device: str | torch.device = "cpu",
              amp: bool = False, rescore: CropRescorer | None = None,
              return_density: bool = False) -> list[dict[str, torch.Tensor]]:
    """The prediction path for one batch: ``images`` (Tensor[3, H, W] in [0, 1], as :func:`dpsnet.data.read_image`
    reads them) on ``device``, under bfloat16 autocast with ``amp`` where the device computes it natively, through
    the model's eval forward (test-time flips, NMS, ``rescore``). :func:`predict` and :class:`dpsnet.deploy.Counter`
    both call it."""
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and native_bf16(device))
    with autocast:
        return model([img.to(device) for img in images], rescore=rescore, return_density=return_density)


def predict_overrides(score_thresh: float | None = None, agnostic_nms: float | None = None,
                      test_flips: str | None = None, test_flip_iou: float | None = None) -> dict:
    """The model keyword arguments that :func:`predict_files`' options replace (``None``: the checkpoint's)."""
    return {name: value for name, value in (("box_score_thresh", score_thresh),
                                            ("box_agnostic_nms_thresh", agnostic_nms),
                                            ("test_flips", test_flips), ("test_flip_iou", test_flip_iou))
            if value is not None}


@torch.no_grad()
def predict(model: DPSNet, dataset: InstancesDataset, categories: CategoryMap, *, batch_size: int = 4,
            device: str | torch.device = "cpu", indices: Sequence[int] | None = None,
            progress: Callable[[int, int], None] | None = None, amp: bool = False,
            rescore: CropRescorer | None = None) -> tuple[list[dict], list[dict]]:
    """Run ``model`` over ``dataset`` (or the ``indices`` of it) in batches; with ``amp``, under bfloat16
    autocast where the device computes it natively (:func:`dpsnet.device.native_bf16`; boxes still decode in
    float32). ``rescore``: a :class:`CropRescorer` applied to the box head's detections (see :class:`DPSNet`).

    Returns ``(results, count_images)``: COCO detections and the ``images`` entries of the counts file.
    """
    was_training = model.training
    model.eval()
    indices = list(range(len(dataset))) if indices is None else list(indices)
    device = torch.device(device)
    results, count_images = [], []
    for start in range(0, len(indices), batch_size):
        images, targets = collate([dataset[i] for i in indices[start:start + batch_size]])
        outputs = run_model(model, images, device=device, amp=amp, rescore=rescore)
        for out, target in zip(outputs, targets, strict=True):
            results += detections_to_results(out, target["image_id"], categories)
            count_images.append(counts_entry(out["counts"], target["image_id"], categories))
        if progress is not None:
            progress(min(start + batch_size, len(indices)), len(indices))
    model.train(was_training)
    return results, count_images


def predict_files(checkpoint: str | Path, instances: str | Path, images: str | Path, out_results: str | Path,
                  out_counts: str | Path, *, batch_size: int = 4, device: str = "auto", score_thresh: float | None = None,
                  agnostic_nms: float | None = None, test_flips: str | None = None,
                  test_flip_iou: float | None = None, reclassifier: str | Path | None = None,
                  reclassifier_power: float = 0.5, progress: bool = True, amp: bool = True) -> tuple[Path, Path]:
    """Predict every image of a pool (or instances) JSON and write the COCO results and the counts file.

    ``score_thresh``, ``agnostic_nms`` (``model.box_agnostic_nms_thresh``), ``test_flips`` and ``test_flip_iou``
    (``model.test_flips``, ``model.test_flip_iou``) replace the checkpoint's values. ``reclassifier``: a
    ``dpsnet pretrain`` file whose crop classifier re-scores the detections (:class:`CropRescorer`, with
    ``reclassifier_power``). ``amp``: bfloat16 autocast where the device computes it natively (CUDA, CPUs with
    AMX or AVX512-BF16), about 1.3x faster there. ``progress``: a progress line with rate and ETA on stderr.
    Under ``torchrun`` each rank predicts its share and rank 0 writes. Both files are validated with
    ``rpc_metrics.io`` against the pool before they are (atomically) written.
    """
    dev = resolve_device(device, dist_info())
    info = init_distributed(dev)
    overrides = predict_overrides(score_thresh, agnostic_nms, test_flips, test_flip_iou)
    model, categories = model_from_checkpoint(checkpoint, dev, **overrides)
    rescorer = None
    if reclassifier is not None:
        rescorer = CropRescorer.from_file(reclassifier, categories.category_ids, power=reclassifier_power)
        rescorer = rescorer.to(dev).eval()
    pool = read_pool(instances)
    dataset = InstancesDataset(pool, images, categories)
    dataset.source = str(instances)
    shard = list(range(info.rank, len(dataset), info.world_size))
    results, count_images = predict(model, dataset, categories, batch_size=batch_size, device=dev, indices=shard,
                                    progress=Progress("predict") if progress and info.rank == 0 else None, amp=amp,
                                    rescore=rescorer)
    results, count_images = gather_lists(results, info), gather_lists(count_images, info)
    if info.rank == 0:
        counts = {"count_classes": categories.count_classes,
                  "images": sorted(count_images, key=lambda e: e["image_id"])}
        validate_results(results, source=str(out_results), gt=pool)
        validate_counts(counts, source=str(out_counts), pool=pool)
        write_results(results, out_results)
        write_counts(counts, out_counts)
    return Path(out_results), Path(out_counts)
