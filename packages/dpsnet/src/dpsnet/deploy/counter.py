"""The checkout counter: a model bundle turned into receipts (per-SKU counts, the detections behind them, the
counting view's opinion and whether the two agree), through the same prediction path as ``dpsnet predict``.

``consistent`` is True when, for every counting class of the bundle (``category``: each SKU; ``supercategory``:
each group; ``object``: all products), the number of counted detections equals the counting view's integral
rounded half up (``floor(x + 0.5)``, as :mod:`rpc_metrics.counts` rounds). The two views are trained apart, so
``consistent=False`` means the picture is hard (occlusion, a stranger on the tray): call a cashier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpc_metrics.counts import half_up

from ..data import CategoryMap, read_image
from ..device import resolve_device
from ..inference.prediction import run_model
from .bundle import bundle_model, read_bundle

ImageLike = str | Path | np.ndarray | torch.Tensor


@dataclass
class Receipt:
    """One image's receipt. ``items``: ``[{"category_id", "name", "count"}]`` (SKUs with at least one counted
    detection, by category id); ``boxes`` (x1, y1, x2, y2 pixels), ``scores`` and ``labels`` (category ids): the
    detections counted (``score >= threshold``); ``view_counts``: the counting view's unrounded count per counting
    class, ``view_total`` their sum; ``detector_counts``: counted detections per counting class; ``consistent``:
    see the module docstring."""

    source: str
    items: list[dict]
    boxes: list[list[float]]
    scores: list[float]
    labels: list[int]
    view_counts: dict[str, float]
    view_total: float
    detector_counts: dict[str, int]
    consistent: bool
    threshold: float
    count_classes: str = "category"
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        """The number of products counted by the detector."""
        return sum(item["count"] for item in self.items)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        return out

    def table(self) -> str:
        """A few lines of text: the verdict, then one line per SKU."""
        verdict = "consistent" if self.consistent else "INCONSISTENT: call a cashier"
        lines = [f"{self.source}: {self.total} products, counting view {self.view_total:.2f} ({verdict})"]
        width = max([len(item["name"]) for item in self.items] + [4])
        lines += [f"  {item['name']:<{width}}  id {item['category_id']:>5}  x {item['count']}" for item in self.items]
        return "\n".join(lines)


def make_receipt(det: Mapping[str, torch.Tensor], categories: CategoryMap, threshold: float,
                 source: str) -> Receipt:
    """A receipt from one image's detections and counts (the model's eval output)."""
    keep = det["scores"].float() >= threshold
    boxes = det["boxes"][keep].float().cpu()
    scores = det["scores"][keep].float().cpu().tolist()
    labels = det["labels"][keep].cpu().tolist()
    per_label: dict[int, int] = {}
    for label in labels:
        per_label[label] = per_label.get(label, 0) + 1
    items = [{"category_id": int(categories.category_ids[lab - 1]),
              "name": (categories.category_names[lab - 1] if categories.category_names else "")
              or str(categories.category_ids[lab - 1]), "count": n} for lab, n in sorted(per_label.items())]
    view = [float(v) for v in det["counts"].float().cpu().tolist()]
    detector = dict.fromkeys(categories.count_names, 0)
    for label, n in per_label.items():
        detector[categories.count_names[categories.count_class_of_label[label]]] += n
    consistent = all(detector[name] == half_up(v) for name, v in zip(categories.count_names, view, strict=True))
    return Receipt(source=source, items=items, boxes=[[float(v) for v in b] for b in boxes.tolist()],
                   scores=scores, labels=[int(categories.category_ids[lab - 1]) for lab in labels],
                   view_counts={name: v for name, v in zip(categories.count_names, view, strict=True)},
                   view_total=float(sum(view)), detector_counts=detector, consistent=consistent,
                   threshold=float(threshold), count_classes=categories.count_classes)


def as_image(image: ImageLike) -> tuple[torch.Tensor, str]:
    """``(Tensor[3, H, W] float32 in [0, 1], a name)`` from a path (read as ``dpsnet predict`` reads files), an
    RGB array [H, W, 3] (uint8, or float in [0, 1]) or a Tensor[3, H, W] in [0, 1]."""
    if isinstance(image, (str, Path)):
        array = read_image(Path(image))
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), str(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array should be RGB [H, W, 3], got shape {image.shape}")
        array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous(), "<array>"
    if isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] == 3:
        return image.float(), "<tensor>"
    raise ValueError(f"an image should be a path, an RGB array [H, W, 3] or a Tensor[3, H, W], got {type(image)}")


class Counter:
    """Count the products of checkout images with a model bundle (``dpsnet export --format bundle``).

    ``Counter.load(path, device="auto")``; ``counter(image)`` -> :class:`Receipt`; ``counter.count_many(images)``
    -> one receipt per image, in batches. Images: paths, RGB arrays or tensors of any size. Float32 by default
    (``amp=True``: bfloat16 autocast where the device has it natively, as ``dpsnet predict --amp``)."""

    def __init__(self, bundle: Mapping[str, Any], device: str | torch.device = "auto", *, amp: bool = False,
                 batch_size: int = 4):
        self.bundle = bundle
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.model, self.categories, self.rescorer = bundle_model(bundle, self.device)
        self.threshold = float(bundle["threshold"])
        self.protocol = str(bundle.get("protocol", ""))
        self.amp, self.batch_size = amp, batch_size

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", **kwargs) -> Counter:
        return cls(read_bundle(path), device, **kwargs)

    def __call__(self, image: ImageLike) -> Receipt:
        return self.count_many([image])[0]

    def detect(self, images: Sequence[torch.Tensor], *, return_density: bool = False) -> list[dict]:
        """The model's outputs for a batch of image tensors (dpsnet.inference's prediction path)."""
        return run_model(self.model, images, device=self.device, amp=self.amp, rescore=self.rescorer,
                         return_density=return_density)

    def count_many(self, images: Sequence[ImageLike], *, progress: Callable[[int, int], None] | None = None,
                   outputs: list | None = None) -> list[Receipt]:
        """One receipt per image; ``outputs``: a list that also receives each image's tensor and model output
        (``(image, det)``, the density map included) for drawing."""
        receipts: list[Receipt] = []
        for start in range(0, len(images), self.batch_size):
            loaded = [as_image(image) for image in images[start:start + self.batch_size]]
            dets = self.detect([t for t, _ in loaded], return_density=outputs is not None)
            for (tensor, name), det in zip(loaded, dets, strict=True):
                receipts.append(make_receipt(det, self.categories, self.threshold, name))
                if outputs is not None:
                    outputs.append((tensor, det))
            if progress is not None:
                progress(len(receipts), len(images))
        return receipts
