"""aco_receipts' flag against a slow, obvious per-image reference, on random cases of several seeds."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aco_receipts


def _case(tmp_path: Path, seed: int, count_classes: str):
    rng = np.random.default_rng(seed)
    cats = [{"id": int(i), "name": f"sku{i}", "supercategory": f"s{i % 2}"} for i in (3, 5, 8)]
    images = [{"id": i + 10, "file_name": f"{i}.jpg", "width": 100, "height": 100, "level": "easy"} for i in range(7)]
    anns, results, counts = [], [], []
    for image in images:
        for _ in range(rng.integers(0, 4)):
            anns.append({"id": len(anns) + 1, "image_id": image["id"], "category_id": int(rng.choice([3, 5, 8])),
                         "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": int(rng.random() < 0.1)})
        for _ in range(rng.integers(0, 5)):
            results.append({"image_id": image["id"], "category_id": int(rng.choice([3, 5, 8])),
                            "bbox": [1, 1, 10, 10], "score": float(rng.choice([0.2, 0.5, 0.9]))})
        keys = {"category": ["3", "5", "8"], "supercategory": ["s0", "s1"], "object": ["object"]}[count_classes]
        counts.append({"image_id": image["id"], "counts": {k: float(rng.choice([0.0, 0.5, 1.4, 2.5])) for k in keys}})
    files = {}
    for name, data in (("gt", {"images": images, "annotations": anns, "categories": cats}), ("results", results),
                       ("counts", {"count_classes": count_classes, "images": counts})):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(data))
    return files, images, anns, results, counts, cats


def _class(cat: dict, count_classes: str) -> str:
    return {"category": str(cat["id"]), "supercategory": cat["supercategory"], "object": "object"}[count_classes]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("count_classes", ["category", "supercategory", "object"])
def test_flags_match_a_per_image_reference(tmp_path, seed, count_classes):
    files, images, anns, results, counts, cats = _case(tmp_path, seed, count_classes)
    threshold = 0.5
    flags = aco_receipts.receipt_flags(files["results"], files["counts"], files["gt"], threshold)
    by_id = {c["id"]: c for c in cats}
    for k, image in enumerate(images):
        dets = [r for r in results if r["image_id"] == image["id"] and r["score"] >= threshold]
        truth = [a for a in anns if a["image_id"] == image["id"] and not a["iscrowd"]]
        right = all(sum(d["category_id"] == c for d in dets) == sum(a["category_id"] == c for a in truth)
                    for c in by_id)
        view = next(c["counts"] for c in counts if c["image_id"] == image["id"])
        consistent = all(sum(_class(by_id[d["category_id"]], count_classes) == key for d in dets)
                         == math.floor(value + 0.5) for key, value in view.items())
        assert flags["right"][k] == right and flags["consistent"][k] == consistent


def test_flag_table_shares_add_up():
    flags = {"consistent": np.array([True, True, False, False]), "right": np.array([True, False, False, True])}
    text, numbers = aco_receipts.flag_table(flags)
    assert numbers["all test images"] == {"images": 4, "share": 1.0, "cacc": 0.5}
    assert numbers["flagged: call a cashier"]["images"] == 2 and "| 50.0% |" in text
    empty, none = aco_receipts.flag_table({"consistent": np.ones(2, bool), "right": np.ones(2, bool)})
    assert none["flagged: call a cashier"]["cacc"] is None and "| - |" in empty
