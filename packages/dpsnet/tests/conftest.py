"""Tiny on-the-fly datasets: coloured shapes on small images, COCO JSON written with rpc_metrics.io.

TRITON_INTERPRET is set before any kernel module is imported so that the kernel-path test can run the Triton
kernels on CPU (aco_kernels imports them lazily).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import cv2
import numpy as np
import pytest

from rpc_metrics.io import write_instances

CATEGORIES = [
    {"id": 3, "name": "red_box", "supercategory": "boxes"},
    {"id": 5, "name": "green_ellipse", "supercategory": "round"},
    {"id": 9, "name": "blue_box", "supercategory": "boxes"},
]
COLOURS = {3: (40, 40, 220), 5: (40, 200, 40), 9: (220, 60, 40)}  # BGR


def make_world(root: Path, *, n_images: int = 6, size: int = 96, seed: int = 0, crowd_every: int = 3,
               levels: bool = True) -> dict:
    """Write ``root/images/*.png`` and ``root/instances.json`` (+ ``root/pool.json`` with one extra blank image)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        canvas = np.full((size, size, 3), 200, np.uint8)
        image_id = 10 + i
        for _ in range(int(rng.integers(1, 4))):
            cat = CATEGORIES[int(rng.integers(0, 3))]["id"]
            w, h = (int(v) for v in rng.integers(14, 30, 2))
            x, y = (int(v) for v in rng.integers(0, size - 30, 2))
            if cat == 5:
                cv2.ellipse(canvas, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, COLOURS[cat], -1)
            else:
                cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), COLOURS[cat], -1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "segmentation": []})
        if crowd_every and i % crowd_every == crowd_every - 1:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 3,
                                "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 1, "segmentation": []})
        name = f"img_{i:03d}.png"
        cv2.imwrite(str(image_dir / name), canvas)
        image = {"id": image_id, "file_name": name, "width": size, "height": size}
        if levels:
            image["level"] = ("easy", "medium", "hard")[i % 3]
        images.append(image)
    dataset = {"info": {}, "licenses": [], "categories": CATEGORIES, "images": images, "annotations": annotations}
    write_instances(dataset, root / "instances.json")
    blank = np.full((size, size, 3), 200, np.uint8)
    cv2.imwrite(str(image_dir / "blank.png"), blank)
    pool = {**dataset, "annotations": [],
            "images": [*images, {"id": 99, "file_name": "blank.png", "width": size, "height": size, "level": "easy"}]}
    write_instances(pool, root / "pool.json")
    return dataset


def tiny_overrides(world: Path, **extra) -> dict:
    """Config values for a tiny, fast model on a ``make_world`` folder."""
    values = {
        "model.small_channels": [8, 16, 16, 32], "model.fpn_channels": 16, "model.min_size": [96],
        "model.max_size": 96, "model.anchor_sizes": [16, 32, 64, 128], "model.rpn_levels": ["1", "2", "3", "pool"],
        "model.rpn_pre_nms_top_n_train": 100, "model.rpn_post_nms_top_n_train": 50,
        "model.rpn_pre_nms_top_n_test": 100, "model.rpn_post_nms_top_n_test": 50,
        "model.rpn_batch_size_per_image": 32, "model.box_batch_size_per_image": 32,
        "model.box_representation_size": 32, "model.count_channels": 16,
        "data.train_instances": [str(world / "instances.json")], "data.train_images": [str(world / "images")],
        "train.batch_size": 2, "train.max_steps": 2, "train.warmup_steps": 1, "train.lr": 0.01,
        "train.log_every": 1, "train.checkpoint_every": 1, "train.device": "cpu",
    }
    values.update(extra)
    return values


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    make_world(root)
    return root
