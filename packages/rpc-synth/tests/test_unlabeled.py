"""The unlabeled estimate: known trays drawn here, shading and shadows ignored, touching products split, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rpc_synth.generate import InputError
from rpc_synth.stats import checkout_stats
from rpc_synth.unlabeled import foreground, split_touching, unlabeled_stats


def _tray(rng, side=256):
    """A tray of one colour under a smooth, uneven light."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = rng.uniform(70, 180, size=3).astype(np.float32)
    light = 1.0 - 0.3 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) ** 2
    return base, base[None, None, :] * light[..., None]


def _camera(image, rng):
    image = image + rng.normal(0, 3, size=image.shape)
    return np.clip(cv2.GaussianBlur(np.clip(image, 0, 255), (0, 0), 0.8), 0, 255).astype(np.uint8)


def _tray_with_products(rng, n, side=256, product=0.16):
    """Rectangles of known size (a printed stripe each), apart from each other, in colours off the tray's."""
    base, image = _tray(rng, side)
    boxes = []
    s = int(product * side)
    while len(boxes) < n:
        w, h = int(s * rng.uniform(0.8, 1.25)), int(s * rng.uniform(0.8, 1.25))
        x, y = int(rng.integers(2, side - w - 2)), int(rng.integers(2, side - h - 2))
        if all(x > bx + bw + 4 or bx > x + w + 4 or y > by + bh + 4 or by > y + h + 4 for bx, by, bw, bh in boxes):
            colour = rng.uniform(0, 255, size=3)
            while np.linalg.norm(colour / colour.sum() - base / base.sum()) < 0.1:
                colour = rng.uniform(0, 255, size=3)
            image[y : y + h, x : x + w] = colour
            image[y + h // 3 : y + h // 2, x + 2 : x + w - 2] = 255 - colour
            boxes.append((x, y, w, h))
    return _camera(image, rng), boxes


def test_known_trays(tmp_path):
    rng = np.random.default_rng(0)
    sizes, counts = [], []
    for i in range(8):
        image, boxes = _tray_with_products(rng, int(rng.integers(3, 9)))
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        sizes += [np.sqrt(w * h) / 256 for _x, _y, w, h in boxes]
        counts.append(len(boxes))
    stats = unlabeled_stats(tmp_path)
    assert stats["kind"] == "unlabeled" and stats["images"] == 8 and stats["image_side"] == 256
    assert stats["product_size"]["median"] == pytest.approx(np.median(sizes), rel=0.1)
    assert stats["instances_per_image"]["mean"] == pytest.approx(np.mean(counts), rel=0.1)
    assert np.abs(np.array(stats["counts"]) - counts).max() <= 1.5
    assert list(stats["levels"]) == ["all"] and stats["max_iou"] is None


def test_shading_and_shadows_are_tray():
    rng = np.random.default_rng(1)
    _, image = _tray(rng)
    yy, xx = np.mgrid[0:256, 0:256]
    blob = np.exp(-((xx - 90) ** 2 + (yy - 120) ** 2) / (2 * 25.0**2))[..., None]
    image = image * (1 - 0.4 * blob)  # a soft shadow
    image = image * (1 + 0.1 * np.exp(-((xx - 190) ** 2 + (yy - 60) ** 2) / (2 * 12.0**2)))[..., None]  # a light spot
    assert not foreground(_camera(image, rng)).any()


def test_touching_products_split():
    mask = np.zeros((80, 140), bool)
    mask[10:60, 10:60] = True
    mask[20:70, 58:118] = True  # touches the first along a short edge
    labels = split_touching(mask)
    assert labels.max() == 2 and ((labels > 0) == mask).all()
    assert len(np.unique(labels[10:60, 10:50])) == 1 and len(np.unique(labels[20:70, 70:118])) == 1


def test_mini_world_estimate_is_in_range(tiny_world):
    """The tiny world (224 px, six images) is a rough check only; the README gives the accuracy on full worlds."""
    labelled = checkout_stats(tiny_world / "instances_val2019.json")
    estimate = unlabeled_stats(tiny_world / "val2019")
    assert estimate["product_size"]["median"] == pytest.approx(labelled["product_size"]["median"], rel=0.3)
    assert estimate["instances_per_image"]["mean"] == pytest.approx(labelled["instances"] / labelled["images"], rel=0.5)


def test_bad_folders(tmp_path):
    with pytest.raises(InputError, match="no images"):
        unlabeled_stats(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        unlabeled_stats(tmp_path / "missing")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"broken\.jpg: cannot read"):
        unlabeled_stats(tmp_path)
    rng = np.random.default_rng(2)
    (tmp_path / "broken.jpg").unlink()
    cv2.imwrite(str(tmp_path / "empty.png"), _camera(_tray(rng)[1], rng))
    with pytest.raises(InputError, match="no products found"):
        unlabeled_stats(tmp_path)
