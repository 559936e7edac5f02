"""RPC-like evaluation cases generated from a seed: checkout ground truth and a detector's results.

Used by the demo, the tests and the benchmarks. Images come in equal thirds of easy (3-5 categories, 3-10
objects), medium (5-8, 10-15) and hard (8-10, 15-20) as in RPC; detections jitter the true boxes, miss a few
objects, confuse a few categories and add low-scoring false positives.
"""

from __future__ import annotations

import numpy as np

from rpc_metrics.io import LEVELS

LEVEL_RANGES = {"easy": ((3, 5), (3, 10)), "medium": ((5, 8), (10, 15)), "hard": ((8, 10), (15, 20))}


def make_case(n_images: int = 600, n_categories: int = 200, *, seed: int = 0, image_size: int = 1815,
              miss_rate: float = 0.03, confusion_rate: float = 0.03, false_positives: float = 2.0,
              ) -> tuple[dict, list[dict]]:
    """Return ``(gt, results)``: an RPC instances dict with levels and a COCO results list."""
    rng = np.random.default_rng(seed)
    levels = np.array(LEVELS)[np.arange(n_images) * 3 // max(n_images, 1)]
    n_cats = np.empty(n_images, dtype=np.int64)
    n_objs = np.empty(n_images, dtype=np.int64)
    for level, ((c0, c1), (o0, o1)) in LEVEL_RANGES.items():
        sel = levels == level
        n_cats[sel] = rng.integers(c0, c1 + 1, sel.sum())
        n_objs[sel] = np.maximum(rng.integers(o0, o1 + 1, sel.sum()), n_cats[sel])
    n_cats = np.minimum(n_cats, n_categories)
    # Objects: each image's categories are a random subset; every category appears at least once.
    obj_image = np.repeat(np.arange(n_images), n_objs)
    slot = np.arange(len(obj_image)) - np.repeat(np.cumsum(n_objs) - n_objs, n_objs)
    picks = np.argsort(rng.random((n_images, n_categories)), axis=1)
    cat_slot = np.where(slot < n_cats[obj_image], slot, rng.integers(0, 1 << 30, len(slot)) % n_cats[obj_image])
    obj_cat = picks[obj_image, cat_slot]
    wh = rng.uniform(0.08, 0.25, (len(obj_image), 2)) * image_size
    xy = rng.uniform(0, 1, (len(obj_image), 2)) * (image_size - wh)
    gt_boxes = np.round(np.c_[xy, wh], 1)
    images = [{"file_name": f"{i + 1:06d}.jpg", "width": image_size, "height": image_size, "id": i + 1,
               "level": str(levels[i])} for i in range(n_images)]
    categories = [{"supercategory": f"group_{k // 12}", "id": k + 1, "name": f"{k + 1}_sku"} for k in range(n_categories)]
    centres = gt_boxes[:, :2] + gt_boxes[:, 2:] / 2
    annotations = [
        {"area": float(b[2] * b[3]), "bbox": b.tolist(), "category_id": int(c) + 1, "id": j + 1,
         "image_id": int(i) + 1, "iscrowd": 0, "segmentation": [], "point_xy": p.tolist()}
        for j, (i, c, b, p) in enumerate(zip(obj_image, obj_cat, gt_boxes, np.round(centres, 1), strict=True))
    ]
    # Detections of true objects, then false positives.
    found = rng.random(len(obj_image)) >= miss_rate
    det_image = obj_image[found]
    det_cat = np.where(rng.random(found.sum()) < confusion_rate, rng.integers(0, n_categories, found.sum()),
                       obj_cat[found])
    det_boxes = gt_boxes[found] + rng.normal(0, 0.04, (found.sum(), 4)) * np.repeat(gt_boxes[found][:, 2:], 2, axis=1)
    det_scores = rng.beta(8, 1.2, found.sum())
    n_fp = rng.poisson(false_positives, n_images)
    fp_image = np.repeat(np.arange(n_images), n_fp)
    fp_wh = rng.uniform(0.05, 0.25, (len(fp_image), 2)) * image_size
    fp_boxes = np.c_[rng.uniform(0, 1, (len(fp_image), 2)) * (image_size - fp_wh), fp_wh]
    all_image = np.r_[det_image, fp_image]
    all_cat = np.r_[det_cat, rng.integers(0, n_categories, len(fp_image))]
    all_boxes = np.round(np.r_[det_boxes, fp_boxes], 2)
    all_scores = np.round(np.r_[det_scores, rng.beta(1.2, 6, len(fp_image))], 5)
    order = np.argsort(all_image, kind="stable")
    results = [
        {"image_id": int(i) + 1, "category_id": int(c) + 1, "bbox": b.tolist(), "score": float(s)}
        for i, c, b, s in zip(all_image[order], all_cat[order], all_boxes[order], all_scores[order], strict=True)
    ]
    gt = {"info": {"description": "rpc-metrics synthetic case", "seed": seed}, "licenses": [],
          "categories": categories, "images": images, "annotations": annotations}
    return gt, results
