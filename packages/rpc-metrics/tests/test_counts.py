"""Count metrics of a counts file against the ground truth, compared with slow loops written from the definitions."""

import math

import numpy as np
import pytest

from rpc_metrics.counts import count_accuracy, count_class_index, count_error, true_totals, view_totals


def slow_key(category: dict, count_classes: str) -> str:
    if count_classes == "category":
        return str(category["id"])
    return str(category.get("supercategory", "")) if count_classes == "supercategory" else "object"


def slow_truth(gt: dict, count_classes: str) -> dict[int, dict[str, int]]:
    """Per image, per class key, the number of non-crowd objects, one annotation at a time."""
    category = {c["id"]: c for c in gt["categories"]}
    truth = {im["id"]: {} for im in gt["images"]}
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        key = slow_key(category[ann["category_id"]], count_classes)
        truth[ann["image_id"]][key] = truth[ann["image_id"]].get(key, 0) + 1
    return truth


def slow_accuracy(counts: dict, gt: dict, total: bool) -> float:
    truth = slow_truth(gt, counts["count_classes"])
    listed = {e["image_id"]: e["counts"] for e in counts["images"]}
    right = 0
    for image_id, true in truth.items():
        counted = listed.get(image_id, {})
        if total:
            right += math.floor(sum(counted.values()) + 0.5) == sum(true.values())
        else:
            rounded = {k: math.floor(v + 0.5) for k, v in counted.items()}
            right += {k: n for k, n in rounded.items() if n} == true
    return right / len(truth)


def noisy_counts(gt: dict, count_classes: str, rng: np.random.Generator) -> dict:
    """The true counts, some of them off by up to one and a half, some images left out."""
    images = []
    for image_id, true in slow_truth(gt, count_classes).items():
        if rng.random() < 0.1:
            continue
        noise = rng.choice([0.0, 0.3, -0.4, 0.5, -0.5, 1.2], size=len(true) + 1)
        counts = {k: float(n + e) for (k, n), e in zip(true.items(), noise, strict=False)}
        if rng.random() < 0.2:
            counts["spurious" if count_classes == "category" else "object"] = float(noise[-1])
        images.append({"image_id": image_id, "counts": counts})
    return {"count_classes": count_classes, "images": images}


@pytest.mark.parametrize("count_classes", ["category", "supercategory", "object"])
@pytest.mark.parametrize("seed", range(4))
def test_count_accuracy_and_error_match_slow_loops(make_case, count_classes, seed):
    gt, _ = make_case(seed, n_images=30)
    counts = noisy_counts(gt, count_classes, np.random.default_rng(seed))
    for total in (False, True):
        assert count_accuracy(counts, gt, total=total) == pytest.approx(slow_accuracy(counts, gt, total))
    truth = slow_truth(gt, "object")
    listed = {e["image_id"]: sum(e["counts"].values()) for e in counts["images"]}
    diffs = [listed.get(i, 0.0) - sum(t.values()) for i, t in truth.items()]
    error = count_error(counts, gt)
    assert error["mae"] == pytest.approx(sum(abs(d) for d in diffs) / len(diffs))
    assert error["bias"] == pytest.approx(sum(diffs) / len(diffs))


def test_exact_counts_are_all_right_and_rounded_half_up(make_case):
    gt, _ = make_case(0, n_images=12)
    truth = slow_truth(gt, "object")
    counts = {"count_classes": "object",
              "images": [{"image_id": i, "counts": {"object": t.get("object", 0) - 0.5}} for i, t in truth.items()]}
    assert count_accuracy(counts, gt) == 1.0 and count_accuracy(counts, gt, total=True) == 1.0  # n - 0.5 -> n
    for entry in counts["images"]:
        entry["counts"]["object"] += 1.0  # n + 0.5 -> n + 1
    assert count_accuracy(counts, gt) == 0.0
    assert count_error(counts, gt) == {"mae": 0.5, "bias": 0.5}


def test_count_class_index_for_each_granularity():
    cats = [{"id": 9, "supercategory": "b"}, {"id": 2, "supercategory": "a"}, {"id": 5}]
    assert count_class_index(cats, "category") == ({2: 0, 5: 1, 9: 2}, ["2", "5", "9"])
    assert count_class_index(cats, "supercategory") == ({2: 1, 5: 0, 9: 2}, ["", "a", "b"])
    assert count_class_index(cats, "object") == ({2: 0, 5: 0, 9: 0}, ["object"])
    with pytest.raises(ValueError, match="count_classes should be one of"):
        count_class_index(cats, "sku")


def test_totals_follow_the_given_images():
    gt = {"annotations": [{"image_id": 1}, {"image_id": 1, "iscrowd": 1}, {"image_id": 4}, {"image_id": 8}]}
    counts = {"images": [{"image_id": 4, "counts": {"a": 1.5, "b": 0.25}}, {"image_id": 8, "counts": {}}]}
    ids = np.array([4, 1, 7])
    assert true_totals(gt, ids).tolist() == [1.0, 1.0, 0.0]
    assert view_totals(counts, ids).tolist() == [1.75, 0.0, 0.0]


def test_count_error_of_no_image_is_zero():
    assert count_error({"count_classes": "object", "images": []},
                       {"images": [], "annotations": [], "categories": []}) == {"mae": 0.0, "bias": 0.0}
