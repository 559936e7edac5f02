"""Shared helpers for rpc-metrics tests: random RPC-like cases and the pycocotools reference."""

import contextlib
import copy
import io
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"


def random_case(seed: int, n_images: int = 40, n_categories: int = 6, crowd_rate: float = 0.08,
                score_decimals: int = 2, with_levels: bool = True):
    """Small gt/results with crowd regions, tied scores, absent categories and empty images."""
    rng = np.random.default_rng(seed)
    levels = ["easy", "medium", "hard"]
    images = [{"id": int(i) * 3 + 7, "file_name": f"{i}.jpg", "width": 120, "height": 100} for i in range(n_images)]
    if with_levels:
        for i, im in enumerate(images):
            im["level"] = levels[i % 3]
    cats = [{"id": k * 2 + 1, "name": f"sku{k}", "supercategory": f"g{k % 2}"} for k in range(n_categories)]
    anns, res = [], []
    for im in images:
        for _ in range(int(rng.integers(0, 7))):
            xy = np.round(rng.uniform(0, 70, 2), 1)
            wh = np.round(rng.uniform(2, 40, 2), 1)
            cat = cats[int(rng.integers(0, n_categories - 1))]["id"]  # the last category never has gt
            b = [float(xy[0]), float(xy[1]), float(wh[0]), float(wh[1])]
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": int(rng.random() < crowd_rate)})
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 2.5, 4)
                res.append({"image_id": im["id"],
                            "category_id": cat if rng.random() < 0.85 else cats[int(rng.integers(0, n_categories))]["id"],
                            "bbox": [b[0] + jitter[0], b[1] + jitter[1], max(b[2] + jitter[2], 0.5), max(b[3] + jitter[3], 0.5)],
                            "score": float(np.round(rng.random(), score_decimals))})
        for _ in range(int(rng.integers(0, 3))):
            xy, wh = rng.uniform(0, 70, 2), rng.uniform(2, 40, 2)
            res.append({"image_id": im["id"], "category_id": cats[int(rng.integers(0, n_categories))]["id"],
                        "bbox": [float(xy[0]), float(xy[1]), float(wh[0]), float(wh[1])],
                        "score": float(np.round(rng.random(), score_decimals))})
    order = rng.permutation(len(res))
    return {"images": images, "categories": cats, "annotations": anns}, [res[i] for i in order]


def pycocotools_stats(gt: dict, results: list, image_ids=None):
    """(mmAP, mAP50, precision[T, R, K]) from pycocotools' COCOeval, the reference."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0], ev.stats[1], ev.eval["precision"][:, :, :, 0, 2]


@pytest.fixture
def data_dir():
    """The official tool's reference evaluation and the real RPC files' schema examples (see data/README.md)."""
    return DATA


@pytest.fixture
def make_case():
    return random_case


@pytest.fixture
def coco_reference():
    return pycocotools_stats


@pytest.fixture
def case_files(tmp_path):
    """``case_files(seed, val_seed)``: a random case and a validation case written as gt/results JSON files."""
    from rpc_metrics.io import write_json

    def write(seed: int, val_seed: int, n_images: int = 24) -> dict[str, str]:
        gt, results = random_case(seed, n_images=n_images)
        val_gt, val_results = random_case(val_seed, n_images=n_images)
        paths = {name: tmp_path / f"{name}.json" for name in ("gt", "results", "val_gt", "val_results")}
        for name, obj in zip(paths, (gt, results, val_gt, val_results), strict=True):
            write_json(obj, paths[name])
        return {k: str(v) for k, v in paths.items()}

    return write

