"""The crop classifier's training data: a square crop around every product box, and its augmentation (zoom-out,
turns, flips, colour jitter and, for a share of the crops, a checkout camera's effects), drawn and applied for a
whole batch at once."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from rpc_metrics.io import image_path, read_instances

from ..data import camera_shot, jitter_map, read_image


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
    a checkout camera (:func:`dpsnet.data.camera_shot`: cast, blur, noise level, JPEG quality; the noise itself from ``seed``).
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
    JPEG) of :func:`dpsnet.data.camera_shot`. The choices come from :func:`draw_crop_params`."""
    params = draw_crop_params(rng, len(crops), crops.shape[1], scale, camera)
    return apply_crop_params(crops, params).permute(0, 3, 1, 2)
