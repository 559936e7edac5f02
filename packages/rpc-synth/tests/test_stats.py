"""checkout_stats against slow, obvious references (loops over boxes and pixels), edge cases, bad input."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from rpc_synth.generate import InputError
from rpc_synth.stats import checkout_stats, largest_iou, union_area

EXAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "rpc-format"


def _iou_slow(a, b):
    ax1, ay1, aw, ah = a
    bx1, by1, bw, bh = b
    iw = max(0.0, min(ax1 + aw, bx1 + bw) - max(ax1, bx1))
    ih = max(0.0, min(ay1 + ah, by1 + bh) - max(ay1, by1))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _coverage_slow(boxes, width, height):
    """Pixels covered by some box (integer boxes: pixel (i, j) is the unit square [i, i+1) x [j, j+1))."""
    covered = 0
    for y in range(height):
        for x in range(width):
            if any(bx <= x and x + 1 <= bx + bw and by <= y and y + 1 <= by + bh for bx, by, bw, bh in boxes):
                covered += 1
    return covered / (width * height)


def _random_split(seed, n_images=7, size=(40, 30)):
    """A labelled split with integer boxes (some partly outside the image, some identical, some crowd)."""
    rng = np.random.default_rng(seed)
    width, height = size
    images, annotations = [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": width, "height": height,
                       "level": ("easy", "medium", "hard")[i % 3]})
        n = int(rng.integers(0, 7))
        for _ in range(n):
            w, h = (int(v) for v in rng.integers(1, 20, size=2))
            x, y = int(rng.integers(-5, width - 2)), int(rng.integers(-5, height - 2))
            annotations.append({"image_id": i + 1, "category_id": int(rng.integers(1, 4)), "bbox": [x, y, w, h],
                                "iscrowd": 0})
        if n >= 2 and rng.random() < 0.5:
            annotations.append({**annotations[-1]})  # an identical box: IoU 1
        if rng.random() < 0.4:  # ignore regions must not count
            annotations.append({"image_id": i + 1, "category_id": 1, "bbox": [0, 0, width, height], "iscrowd": 1})
    for k, ann in enumerate(annotations):
        ann["id"] = k + 1
    categories = [{"id": c, "name": f"sku{c}"} for c in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _stats_slow(data):
    out = {"sizes": [], "ious": [], "coverage": [], "levels": {}}
    for im in data["images"]:
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == im["id"] and a["iscrowd"] == 0]
        cats = {a["category_id"] for a in data["annotations"] if a["image_id"] == im["id"] and a["iscrowd"] == 0}
        side = math.sqrt(im["width"] * im["height"])
        out["sizes"] += [math.sqrt(w * h) / side for _x, _y, w, h in boxes if w * h > 0]
        if boxes:
            best = [max([_iou_slow(a, b) for j, b in enumerate(boxes) if j != i] or [0.0]) for i, a in enumerate(boxes)]
            out["ious"].append(sum(best) / len(best))
        out["coverage"].append(_coverage_slow(boxes, im["width"], im["height"]))
        level = out["levels"].setdefault(im["level"], {"instances": [], "categories": []})
        level["instances"].append(len(boxes))
        level["categories"].append(len(cats))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_checkout_stats_against_loops(seed):
    data = _random_split(seed)
    got, ref = checkout_stats(data), _stats_slow(data)
    assert got["product_size"]["median"] == pytest.approx(statistics.median(ref["sizes"]))
    assert got["product_size"]["p10"] == pytest.approx(float(np.percentile(ref["sizes"], 10)))
    assert got["product_size"]["p90"] == pytest.approx(float(np.percentile(ref["sizes"], 90)))
    assert got["max_iou"] == pytest.approx(sum(ref["ious"]) / len(ref["ious"]))
    assert got["coverage"] == pytest.approx(sum(ref["coverage"]) / len(ref["coverage"]))
    assert got["image_side"] == pytest.approx(math.sqrt(40 * 30))
    assert got["instances"] == len(ref["sizes"])
    for name, level in ref["levels"].items():
        for key in ("instances", "categories"):
            assert got["levels"][name][key] == {"min": min(level[key]), "median": statistics.median(level[key]),
                                                "max": max(level[key])}


def test_overlap_edge_cases():
    boxes = np.array([[0, 0, 10, 10], [10, 0, 10, 10], [0, 0, 10, 10], [30, 30, 4, 4]], float)
    # touching boxes overlap nothing, identical ones fully, a lone box not at all
    assert largest_iou(boxes).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert largest_iou(boxes[:1]).tolist() == [0.0]
    assert union_area(boxes, 100, 100) == 216.0
    assert union_area(np.array([[-5, -5, 10, 10]], float), 20, 20) == 25.0  # clipped to the image
    assert union_area(np.zeros((0, 4)), 20, 20) == 0.0


def test_crowd_regions_ignored_and_levels_pooled():
    data = _random_split(5)
    plain = {**data, "annotations": [a for a in data["annotations"] if a["iscrowd"] == 0]}
    assert checkout_stats(data)["product_size"] == checkout_stats(plain)["product_size"]
    no_levels = {**plain, "images": [{k: v for k, v in im.items() if k != "level"} for im in plain["images"]]}
    pooled = checkout_stats(no_levels)
    assert list(pooled["levels"]) == ["all"] and pooled["levels"]["all"]["images"] == len(plain["images"])


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="shared/rpc-format examples not present")
def test_rpc_example_file():
    stats = checkout_stats(EXAMPLES / "instances_test2019.example.json")
    assert stats["instances"] > 0 and 0 < stats["product_size"]["median"] < 1


def test_bad_splits_name_the_file(tmp_path):
    data = _random_split(0)
    with pytest.raises(InputError, match=r"no product annotations.*--checkout-images"):
        checkout_stats({**data, "annotations": []}, source="pool.json")
    with pytest.raises(InputError, match=r"pool\.json: no images"):
        checkout_stats({**data, "images": [], "annotations": []}, source="pool.json")
    data["images"][0].pop("width")
    with pytest.raises(InputError, match=r"images id=1: needs width and height"):
        checkout_stats(data)
