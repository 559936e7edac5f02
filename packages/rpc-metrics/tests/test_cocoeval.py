"""The vectorized COCO bbox evaluation against pycocotools, the reference."""

import numpy as np
import pytest

from rpc_metrics import evaluate


def fast_map(gt, results, levels=("averaged",)):
    report = evaluate(results, gt, protocol="fixed", threshold=0.5, levels=list(levels))
    return {r.level: (r.mmap, r.map50) for r in report.rows}


@pytest.mark.parametrize("seed", range(10))
def test_equal_to_pycocotools(seed, make_case, coco_reference):
    gt, results = make_case(seed)
    mmap, map50, _ = coco_reference(gt, results)
    got = fast_map(gt, results)["averaged"]
    assert got[0] == pytest.approx(mmap, abs=1e-6) and got[1] == pytest.approx(map50, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_per_level_rows_equal_pycocotools_on_image_subsets(seed, make_case, coco_reference):
    gt, results = make_case(seed, n_images=45)
    got = fast_map(gt, results, levels=("easy", "medium", "hard", "averaged"))
    for level in ("easy", "medium", "hard"):
        ids = [im["id"] for im in gt["images"] if im["level"] == level]
        mmap, map50, _ = coco_reference(gt, results, image_ids=ids)
        assert got[level][0] == pytest.approx(mmap, abs=1e-6)
        assert got[level][1] == pytest.approx(map50, abs=1e-6)


def test_per_category_ap_equals_pycocotools_precision(make_case, coco_reference):
    gt, results = make_case(11)
    _, _, precision = coco_reference(gt, results)
    report = evaluate(results, gt, protocol="fixed", threshold=0.5, levels=["averaged"])
    ap = np.array([np.nan if v is None else v for v in report.rows[0].per_category["ap"]])
    expected = np.where(precision[0, 0] > -1, precision.mean(axis=(0, 1)), np.nan)
    np.testing.assert_allclose(ap, expected, atol=1e-9)


def test_more_than_100_detections_in_one_group_and_identical_scores(coco_reference):
    rng = np.random.default_rng(3)
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    anns = [{"id": i + 1, "image_id": 1 + i % 2, "category_id": 1, "bbox": [float(i), 0.0, 10.0, 10.0],
             "area": 100.0, "iscrowd": 0} for i in range(30)]
    results = [{"image_id": 1, "category_id": 1, "bbox": [float(rng.integers(0, 30)), 0.0, 10.0, 10.0],
                "score": 0.5} for _ in range(130)]
    results += [{"image_id": 2, "category_id": 1, "bbox": [float(i), 0.0, 10.0, 10.0], "score": 0.5} for i in range(30)]
    gt = {"images": images, "categories": cats, "annotations": anns}
    mmap, map50, _ = coco_reference(gt, results)
    got = fast_map(gt, results)["averaged"]
    assert got == pytest.approx((mmap, map50), abs=1e-9)


def test_ground_truth_id_zero_quirk_and_missing_area(coco_reference):
    # pycocotools tests the matched gt's id for truth: a match to id 0 is a false positive there too.
    images = [{"id": 1, "file_name": "a.jpg"}]
    cats = [{"id": 1, "name": "a"}]
    anns = [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [20.0, 0.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0}]
    results = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [20.0, 0.0, 10.0, 10.0], "score": 0.8}]
    gt = {"images": images, "categories": cats, "annotations": anns}
    mmap, map50, _ = coco_reference(gt, results)
    assert fast_map(gt, results)["averaged"] == pytest.approx((mmap, map50), abs=1e-9)
    for ann in anns:
        del ann["area"]  # area defaults to w * h, as written by pycocotools' loadRes for results
    assert fast_map(gt, results)["averaged"] == pytest.approx((mmap, map50), abs=1e-9)


def test_empty_results_and_pycocotools_backend(make_case):
    gt, results = make_case(5)
    empty = evaluate([], gt, protocol="fixed", threshold=0.5, levels=["averaged"]).rows[0]
    assert empty.mmap == 0.0 and empty.map50 == 0.0
    backend = evaluate([], gt, protocol="fixed", threshold=0.5, levels=["averaged"], map_backend="pycocotools").rows[0]
    assert backend.mmap == 0.0
    fast = evaluate(results, gt, levels=["easy", "averaged"])
    ref = evaluate(results, gt, levels=["easy", "averaged"], map_backend="pycocotools")
    for a, b in zip(fast.rows, ref.rows, strict=True):
        assert a.mmap == pytest.approx(b.mmap, abs=1e-9) and a.map50 == pytest.approx(b.map50, abs=1e-9)
        assert a.per_category["ap"] == pytest.approx(b.per_category["ap"], abs=1e-9, nan_ok=True)


def test_no_ground_truth_at_all_gives_none():
    gt = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "a"}], "annotations": []}
    row = evaluate([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.3}], gt,
                   protocol="fixed", threshold=0.1).rows[0]
    assert row.mmap is None and row.map50 is None and row.mciou == 0.0 and row.mccd is None
