"""generate vs the reference scripts' approach, same exemplars, same image sizes, same run.

The naive baseline does what the reference synthesis scripts do, written with numpy/cv2 (PIL is not a
dependency): per object it re-reads the exemplar photo, cuts it out, rotates it, pastes it into the full
image with a full-image alpha blend, finds a place with a Python rejection loop over the placed boxes,
and Gaussian-filters a full-size density map for that object alone (scipy-style per-object filtering).
Both sides JPEG-encode their image. Run: ``make bench`` or
``pytest packages/rpc-synth/benchmarks --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from rpc_metrics.io import decode_mask
from rpc_synth.baskets import sample_basket
from rpc_synth.generate import GenerateConfig, compose_image, load_bank
from rpc_synth.masks import build_masks
from rpc_synth.poses import prune_poses
from rpc_synth.world import WorldConfig, build_world

SIZES = (384, 1815)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    build_world(root / "world", WorldConfig(skus=12, azimuths=4, val_images=0, test_images=0, pool_images=0), progress=False)
    build_masks(root / "world/instances_train2019.json", root / "world/train2019", root / "masks", progress=False)
    prune_poses(root / "masks/instances_masks.json", root / "poses.json")
    return load_bank(root / "poses.json", root / "world/train2019")


def ours(bank, config, index):
    image, _, annotations = compose_image(bank, config, index)
    _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    return data, annotations


def naive(bank, config, index):
    """The reference scripts' approach (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    size = config.size
    basket = sample_basket(config.levels[index % 3], bank.category_ids, rng)
    canvas = np.full((size, size, 3), 128, np.float32)
    density = np.zeros((size, size), np.float32)
    boxes: list[tuple[float, float, float, float]] = []
    for category_id in basket:
        options = bank.by_category[category_id]
        exemplar = options[int(rng.integers(len(options)))]
        photo = cv2.imread(str(exemplar.path))  # re-read for every object
        mask = decode_mask(exemplar.annotation["segmentation"]).astype(np.float32)
        x, y, w, h = (int(v) for v in exemplar.bbox)
        crop, alpha = photo[y : y + h, x : x + w], mask[y : y + h, x : x + w]
        scale = rng.uniform(*config.scale) * size / exemplar.width
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(0, 360), scale)
        side = int(np.hypot(w, h) * scale) + 2
        matrix[:, 2] += (side / 2 - w / 2, side / 2 - h / 2)
        crop = cv2.warpAffine(crop, matrix, (side, side))
        alpha = cv2.warpAffine(alpha, matrix, (side, side))
        side = min(side, size)
        crop, alpha = crop[:side, :side], alpha[:side, :side]
        for _ in range(200):  # rejection loop, one candidate at a time, one box at a time
            px, py = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            fits = True
            for bx, by, bw, bh in boxes:
                iw = max(0.0, min(px + side, bx + bw) - max(px, bx))
                ih = max(0.0, min(py + side, by + bh) - max(py, by))
                inter = iw * ih
                if inter / (side * side + bw * bh - inter) > config.max_iou:
                    fits = False
                    break
            if fits:
                break
        boxes.append((px, py, side, side))
        full_alpha = np.zeros((size, size), np.float32)  # paste through full-image layers
        full_image = np.zeros((size, size, 3), np.float32)
        full_alpha[py : py + side, px : px + side] = alpha
        full_image[py : py + side, px : px + side] = crop
        canvas = canvas * (1 - full_alpha[..., None]) + full_image * full_alpha[..., None]
        point = np.zeros((size, size), np.float32)
        point[min(py + side // 2, size - 1), min(px + side // 2, size - 1)] = 1.0
        density += cv2.GaussianBlur(point, (0, 0), max(side / 4.0, 1.0))  # full map, per object
    _, data = cv2.imencode(".jpg", np.clip(canvas, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return data, density


def _config(size: int) -> GenerateConfig:
    return GenerateConfig(images=1000, size=size, seed=1)


@pytest.mark.parametrize("size", SIZES)
def test_bench_generate(benchmark, bank, size):
    cv2.setNumThreads(1)  # per core
    config, counter = _config(size), iter(range(10**6))
    benchmark.pedantic(lambda: ours(bank, config, next(counter)), rounds=12 if size > 1000 else 40, warmup_rounds=1)


@pytest.mark.parametrize("size", SIZES)
def test_bench_naive_baseline(benchmark, bank, size):
    cv2.setNumThreads(1)
    config, counter = _config(size), iter(range(10**6))
    benchmark.pedantic(lambda: naive(bank, config, next(counter)), rounds=2 if size > 1000 else 20, warmup_rounds=1)


@pytest.mark.parametrize("size", SIZES)
def test_bench_speedup(benchmark, bank, size):
    """Both on the same image indices in one run; prints images/s per core and the ratio (no assertion)."""
    cv2.setNumThreads(1)
    config = _config(size)
    n = 3 if size > 1000 else 30

    def rate(fn):
        start = time.perf_counter()
        for i in range(n):
            fn(bank, config, i)
        return n / (time.perf_counter() - start)

    ours_rate, naive_rate = rate(ours), rate(naive)
    benchmark.extra_info.update(ours_images_per_s=ours_rate, naive_images_per_s=naive_rate,
                                speedup=ours_rate / naive_rate)
    print(f"\nsize {size}: generate {ours_rate:.1f} img/s, naive {naive_rate:.2f} img/s per core, "
          f"speedup {ours_rate / naive_rate:.1f}x")
    benchmark.pedantic(lambda: None, rounds=1)
