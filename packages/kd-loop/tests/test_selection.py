import numpy as np
import pytest

from kd_loop.selection import SelectionPolicy, select_pseudo_labels


def pool():
    return {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3, 4)],
            "categories": [{"id": 1, "name": "cola", "supercategory": "drink"},
                           {"id": 2, "name": "tea", "supercategory": "drink"},
                           {"id": 3, "name": "chips", "supercategory": "snack"}],
            "annotations": []}


def det(image_id, category_id, score, x=0.0):
    return {"image_id": image_id, "category_id": category_id, "bbox": [x, 0.0, 10.0, 10.0], "score": score}


RESULTS = [
    det(1, 1, 0.95), det(1, 1, 0.90, 20), det(1, 3, 0.85, 40), det(1, 2, 0.40, 60),  # agrees with its counts
    det(2, 1, 0.95), det(2, 2, 0.60, 20),                                            # tea below threshold
    det(3, 3, 0.99), det(3, 3, 0.98, 20),                                            # counter says 1 chips
    det(4, 2, 0.20),                                                                 # nothing confident
]
COUNTS = {"count_classes": "category", "images": [
    {"image_id": 1, "counts": {"1": 2.2, "3": 0.6, "2": 0.1}},
    {"image_id": 2, "counts": {"1": 1.0, "2": 1.4}},
    {"image_id": 3, "counts": {"3": 1.49}},
    {"image_id": 4, "counts": {}},
]}


def test_image_level_keeps_images_whose_detections_agree_with_the_counts():
    data, stats = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image", threshold=0.8))
    assert [im["id"] for im in data["images"]] == [1]
    assert [(a["category_id"], a["iscrowd"]) for a in data["annotations"]] == [(1, 0), (1, 0), (3, 0)]
    assert stats["selected_images"] == 1 and stats["boxes"] == 3 and stats["ignore_regions"] == 0
    # A lower threshold brings image 2's tea in: now 1 cola + 1 tea, matching its rounded counts.
    data, _ = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image", threshold=0.55))
    assert [im["id"] for im in data["images"]] == [1, 2]


def test_rounding_is_half_up():
    counts = {"count_classes": "category", "images": [{"image_id": 3, "counts": {"3": 1.5}}]}
    data, _ = select_pseudo_labels(pool(), RESULTS, counts, SelectionPolicy("image", threshold=0.8))
    assert [im["id"] for im in data["images"]] == [3]


def test_supercategory_and_object_granularity():
    counts = {"count_classes": "supercategory", "images": [
        {"image_id": 2, "counts": {"drink": 2.0}}, {"image_id": 1, "counts": {"drink": 2.0, "snack": 1.0}}]}
    data, _ = select_pseudo_labels(pool(), RESULTS, counts,
                                   SelectionPolicy("image", threshold=0.55, count_classes="supercategory"))
    assert [im["id"] for im in data["images"]] == [1, 2]  # image 3: 2 snacks detected, no count
    counts = {"count_classes": "object", "images": [{"image_id": 3, "counts": {"object": 2.1}}]}
    data, _ = select_pseudo_labels(pool(), RESULTS, counts,
                                   SelectionPolicy("image", threshold=0.8, count_classes="object"))
    assert [im["id"] for im in data["images"]] == [3]


def test_auto_granularity_is_the_counts_files_own():
    """The default compares at the counter's classes: an object counter's totals, a per-SKU counter's SKUs."""
    assert SelectionPolicy().count_classes == "auto"
    objects = {"count_classes": "object", "images": [{"image_id": 3, "counts": {"object": 2.1}}]}
    for counts in (objects, COUNTS,
                   {"count_classes": "supercategory", "images": [
                       {"image_id": 2, "counts": {"drink": 2.0}}, {"image_id": 1, "counts": {"drink": 2.0, "snack": 1.0}}]}):
        for threshold in (0.55, 0.8):
            auto = select_pseudo_labels(pool(), RESULTS, counts, SelectionPolicy("image", threshold=threshold))
            named = select_pseudo_labels(pool(), RESULTS, counts, SelectionPolicy(
                "image", threshold=threshold, count_classes=counts["count_classes"]))
            assert auto == named
    with pytest.raises(ValueError, match="count_classes should be one of"):
        select_pseudo_labels(pool(), RESULTS, {"count_classes": "sku", "images": []}, SelectionPolicy("image"))
    with pytest.raises(ValueError, match="count_classes should be auto"):
        SelectionPolicy("image", count_classes="sku")
    # The instance policy needs no counts file.
    data, _ = select_pseudo_labels(pool(), RESULTS, None, SelectionPolicy("instance", threshold=0.8))
    assert data["images"]


def test_category_counts_compared_per_supercategory_or_in_total_are_summed_before_rounding():
    # Image 1: 2.2 + 0.1 + 0.6 = 2.9 -> 3 objects (3 confident detections); per class 0.6 and 0.1 round apart.
    # Image 2: 1.0 + 1.4 = 2.4 -> 2, two detections from 0.55 up. Image 3: 1.49 -> 1, two detected.
    data, _ = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image", threshold=0.8,
                                                                            count_classes="object"))
    assert [im["id"] for im in data["images"]] == [1]
    data, _ = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image", threshold=0.55,
                                                                            count_classes="object"))
    assert [im["id"] for im in data["images"]] == [1, 2]
    # Per supercategory, image 1: drink 2.2 + 0.1 -> 2 (two colas), snack 0.6 -> 1 (one chips).
    data, _ = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image", threshold=0.8,
                                                                            count_classes="supercategory"))
    assert [im["id"] for im in data["images"]] == [1]
    # Without the summing, image 2 at 0.55 would need 1 cola + 1 tea per category: it has them, and still agrees.
    data, _ = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image", threshold=0.55))
    assert [im["id"] for im in data["images"]] == [1, 2]


def test_instance_level_marks_uncertain_detections_as_ignore_regions():
    data, stats = select_pseudo_labels(pool(), RESULTS, None,
                                       SelectionPolicy("instance", threshold=0.8, ignore_threshold=0.3))
    assert [im["id"] for im in data["images"]] == [1, 2, 3]  # image 4 has no confident box
    crowd = [(a["image_id"], a["category_id"]) for a in data["annotations"] if a["iscrowd"]]
    assert crowd == [(1, 2), (2, 2)]
    assert stats["boxes"] == 6 and stats["ignore_regions"] == 2
    assert all(a["score"] >= 0.3 and a["area"] == 100.0 for a in data["annotations"])


def test_image_plus_instance_and_min_boxes():
    data, _ = select_pseudo_labels(pool(), RESULTS, COUNTS,
                                   SelectionPolicy("image+instance", threshold=0.8, ignore_threshold=0.3))
    assert [im["id"] for im in data["images"]] == [1]
    assert [a["iscrowd"] for a in data["annotations"]] == [0, 0, 0, 1]
    data, _ = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image", threshold=0.8, min_boxes=4))
    assert data["images"] == []


def test_random_control_picks_as_many_images_deterministically():
    policy = SelectionPolicy("random", threshold=0.55, seed=3)
    a, stats = select_pseudo_labels(pool(), RESULTS, COUNTS, policy)
    b, _ = select_pseudo_labels(pool(), RESULTS, COUNTS, policy)
    assert a == b and stats["selected_images"] == 2  # as many as the image policy keeps (images 1 and 2)
    chosen = {
        tuple(im["id"] for im in select_pseudo_labels(
            pool(), RESULTS, COUNTS, SelectionPolicy("random", threshold=0.55, seed=s))[0]["images"])
        for s in range(20)
    }
    assert len(chosen) > 1 and all(len(c) == 2 and set(c) <= {1, 2, 3} for c in chosen)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_instance_control_draws_as_many_labels_among_the_candidates(seed):
    loop = SelectionPolicy("instance", threshold=0.8, ignore_threshold=0.3)
    control = SelectionPolicy("random-instance", threshold=0.8, ignore_threshold=0.3, seed=seed)
    _, want = select_pseudo_labels(pool(), RESULTS, COUNTS, loop)
    data, stats = select_pseudo_labels(pool(), RESULTS, COUNTS, control)
    assert (stats["boxes"], stats["ignore_regions"]) == (want["boxes"], want["ignore_regions"])
    candidates = {(r["image_id"], r["category_id"], tuple(r["bbox"]), r["score"]) for r in RESULTS if r["score"] >= 0.3}
    labelled = [a for a in data["annotations"] if not a["iscrowd"]]
    assert {(a["image_id"], a["category_id"], tuple(a["bbox"]), a["score"]) for a in data["annotations"]} \
        == candidates  # every candidate is a label or an ignore region, once
    assert data == select_pseudo_labels(pool(), RESULTS, COUNTS, control)[0]  # seeded
    draws = {tuple(sorted(a["score"] for a in select_pseudo_labels(
        pool(), RESULTS, COUNTS, SelectionPolicy("random-instance", threshold=0.8, ignore_threshold=0.3, seed=s)
    )[0]["annotations"] if not a["iscrowd"])) for s in range(20)}
    assert len(draws) > 1 and len(labelled) == want["boxes"]


def test_the_selector_refuses_ground_truth_and_bad_inputs():
    labelled = pool()
    labelled["annotations"] = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]
    with pytest.raises(ValueError, match="ground truth never reaches the selector"):
        select_pseudo_labels(labelled, RESULTS, COUNTS, SelectionPolicy())
    with pytest.raises(ValueError, match="needs the counting view"):
        select_pseudo_labels(pool(), RESULTS, None, SelectionPolicy("image"))
    with pytest.raises(ValueError, match="finer classes than it has"):
        select_pseudo_labels(pool(), RESULTS, {**COUNTS, "count_classes": "object"},
                             SelectionPolicy("image", count_classes="category"))
    with pytest.raises(ValueError, match="not in the pool"):
        select_pseudo_labels(pool(), [det(9, 1, 0.9)], COUNTS, SelectionPolicy("instance"))
    with pytest.raises(ValueError, match="ignore_threshold"):
        SelectionPolicy(threshold=0.5, ignore_threshold=0.7)


def test_count_scale_multiplies_the_counts_before_rounding():
    doubled = {**COUNTS, "images": [{"image_id": it["image_id"], "counts": {k: 2 * v for k, v in it["counts"].items()}}
                                    for it in COUNTS["images"]]}
    want = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image", threshold=0.8))
    _, stats = select_pseudo_labels(pool(), RESULTS, doubled, SelectionPolicy("image", threshold=0.8))
    assert stats["selected_images"] == 0  # every count doubled: nothing agrees
    data, stats = select_pseudo_labels(pool(), RESULTS, doubled, SelectionPolicy("image", threshold=0.8, count_scale=0.5))
    assert data == want[0] and stats["count_scale"] == 0.5
    with pytest.raises(ValueError, match="count_scale should be a positive number"):
        SelectionPolicy(count_scale=float("nan"))


def test_fallback_adds_the_images_closest_to_agreement():
    # At 0.8: image 1 agrees; image 2 (1 cola, tea 1.4 -> 1 but undetected) and image 3 (2 chips, 1.49 -> 1) are
    # both one off; image 4 has no label. Ties go to the lower image id.
    for minimum, ids, added in ((1, [1], 0), (2, [1, 2], 1), (3, [1, 2, 3], 2), (4, [1, 2, 3], 2)):
        data, stats = select_pseudo_labels(pool(), RESULTS, COUNTS,
                                           SelectionPolicy("image", threshold=0.8, min_images=minimum))
        assert [im["id"] for im in data["images"]] == ids
        assert (stats["agreeing_images"], stats["fallback_images"], stats["min_images"]) == (1, added, minimum)
        assert (stats["reason"] is None) == (minimum == 1)
    assert "no other image has at least 1 label" in stats["reason"]
    data, stats = select_pseudo_labels(pool(), RESULTS, COUNTS,
                                       SelectionPolicy("image", threshold=0.8, min_images=3, fallback="none"))
    assert [im["id"] for im in data["images"]] == [1] and stats["fallback_images"] == 0
    assert "fallback 'none' adds no image" in stats["reason"]
    # A fallback image is labelled like an agreeing one: its confident boxes, and ignore regions under image+instance.
    data, _ = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy(
        "image+instance", threshold=0.8, ignore_threshold=0.3, min_images=2))
    assert [(a["image_id"], a["iscrowd"]) for a in data["annotations"] if a["image_id"] == 2] == [(2, 0), (2, 1)]


def slow_closest(detected, view, ids, candidates, n):
    """Every candidate with its disagreement sum_k |detected - view|, sorted by (disagreement, image id)."""
    ranked = sorted((sum(abs(int(d) - int(v)) for d, v in zip(detected[i], view[i], strict=True)), ids[i], i)
                    for i in range(len(ids)) if candidates[i])
    return [i for _, _, i in ranked[:n]]


@pytest.mark.parametrize("seed", range(5))
def test_closest_to_agreement_against_a_slow_ranking(seed):
    from kd_loop.selection import closest_to_agreement

    rng = np.random.default_rng(seed)
    n = 40
    detected, view = rng.integers(0, 4, (n, 3)), rng.integers(0, 4, (n, 3))  # many ties
    ids = rng.permutation(1000)[:n]
    candidates = rng.random(n) < 0.7
    for k in (0, 5, 40):
        assert closest_to_agreement(detected, view, ids, candidates, k).tolist() == \
            slow_closest(detected, view, ids, candidates, k)


def test_fallback_is_deterministic_whatever_the_order_of_the_predictions():
    policy = SelectionPolicy("image+instance", threshold=0.8, ignore_threshold=0.3, min_images=2)
    want = select_pseudo_labels(pool(), RESULTS, COUNTS, policy)
    shuffled = {**COUNTS, "images": COUNTS["images"][::-1]}
    reordered_pool = {**pool(), "images": pool()["images"][::-1]}
    got = select_pseudo_labels(reordered_pool, RESULTS, shuffled, policy)
    assert [im["id"] for im in got[0]["images"]] == [2, 1] and got[1] == want[1]  # the pool's own order is kept
    assert sorted(got[0]["annotations"], key=lambda a: a["id"]) == want[0]["annotations"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_control_draws_as_many_images_as_the_policy_keeps_with_fallback(seed):
    _, real = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy("image+instance", threshold=0.8,
                                                                              ignore_threshold=0.3, min_images=3))
    data, control = select_pseudo_labels(pool(), RESULTS, COUNTS, SelectionPolicy(
        "random", threshold=0.8, ignore_threshold=0.3, min_images=3, seed=seed))
    assert control["selected_images"] == real["selected_images"] == len(data["images"]) == 3
    assert (control["agreeing_images"], control["fallback_images"]) == (1, 2)
    assert {im["id"] for im in data["images"]} <= {1, 2, 3}  # images with at least min_boxes labels


def test_instance_policies_report_a_shortfall_without_a_fallback():
    _, stats = select_pseudo_labels(pool(), RESULTS, None, SelectionPolicy("instance", threshold=0.8, min_images=4))
    assert stats["selected_images"] == 3 and stats["fallback_images"] == 0 and stats["agreeing_images"] is None
    assert stats["fallback"] is None and "fewer than the minimum 4" in stats["reason"]
    with pytest.raises(ValueError, match="fallback should be one of"):
        SelectionPolicy(fallback="nearest")
