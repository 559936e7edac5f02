"""Pictures of predictions: boxes, labels, scores and the density map drawn over each image (OpenCV)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch

from rpc_metrics.io import read_pool

from ..checkpoint import model_from_checkpoint
from ..data import CategoryMap, InstancesDataset, write_image
from ..device import resolve_device


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
    dataset = InstancesDataset(read_pool(instances), images, categories)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(limit, len(dataset))):
        image, target = dataset[i]
        det = model([image.to(dev)], return_density=True)[0]
        path = out_dir / f"{target['image_id']}.png"
        written.append(write_image(path, draw(image.permute(1, 2, 0).numpy(), det, categories, score_thresh)))
    return written
