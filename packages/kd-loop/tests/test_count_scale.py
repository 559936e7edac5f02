"""The counting view's scale: the ratio estimator by hand and against a slow loop written out, its guards, and
in the loop: a counter that counts 1.6x what the detector finds agrees on no image until it is calibrated."""

import json
import math
from collections import Counter

import numpy as np
import pytest

from kd_loop import load_config, run_loop
from kd_loop.calibration import SCALE_RANGE, count_error, count_scale, fit_count_scale
from rpc_metrics.io import write_json
from rpc_metrics.synthetic import make_case


def test_fit_by_hand():
    truth, view = np.array([3.0, 5.0, 0.0]), np.array([4.8, 8.2, 0.5])
    fit = fit_count_scale(truth, view)
    assert fit == {"scale": 8 / 13.5, "unclipped": 8 / 13.5, "clipped": False, "true_objects": 8.0, "counted": 13.5}
    # Scaled by 8/13.5: 2.84 -> 3, 4.86 -> 5, 0.30 -> 0: no error left; unscaled (0.5 rounds up): 2 + 3 + 1.
    assert count_error(truth, view, fit["scale"]) == 0.0
    assert count_error(truth, view, 1.0) == 2.0


def test_fit_is_clipped_and_guarded():
    fit = fit_count_scale(np.array([10.0]), np.array([1.0]))
    assert fit["scale"] == SCALE_RANGE[1] and fit["unclipped"] == 10.0 and fit["clipped"]
    assert fit_count_scale(np.array([1.0]), np.array([10.0]))["scale"] == SCALE_RANGE[0]
    for truth, view in (([3.0], [0.0]), ([3.0], [-0.2]), ([0.0], [2.0]), ([], [])):
        fit = fit_count_scale(np.array(truth), np.array(view))
        assert fit["scale"] == 1.0 and fit["unclipped"] is None and not fit["clipped"]
    assert count_error(np.array([]), np.array([]), 1.0) is None


def slow_count_scale(gt, counts):
    """Written out: t_i counted annotation by annotation, v_i summed count by count, s = sum t / sum v clipped,
    errors as the mean of |round half up(s v_i) - t_i|."""
    ids = sorted(im["id"] for im in gt["images"])
    truth = {i: 0 for i in ids}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            truth[ann["image_id"]] += 1
    view = {i: 0.0 for i in ids}
    for item in counts["images"]:
        if item["image_id"] in view:
            for value in item["counts"].values():
                view[item["image_id"]] += value
    scale = sum(truth.values()) / sum(view.values())
    scale = min(max(scale, 0.25), 4.0)

    def error(s):
        return sum(abs(math.floor(s * view[i] + 0.5) - truth[i]) for i in ids) / len(ids)

    return scale, error(1.0), error(scale)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("count_classes", "factor"), [("category", 1.6), ("object", 0.7), ("category", 9.0)])
def test_matches_the_slow_reference(seed, count_classes, factor):
    gt, _ = make_case(15, 6, seed=seed, image_size=200)
    gt["annotations"][0]["iscrowd"] = 1  # a crowd box is not a product to count
    rng = np.random.default_rng(seed)
    per_image = {im["id"]: Counter() for im in gt["images"]}
    for ann in gt["annotations"]:
        key = str(ann["category_id"]) if count_classes == "category" else "object"
        per_image[ann["image_id"]][key] += factor * (1 + rng.normal(0, 0.1))
    counts = {"count_classes": count_classes,
              "images": [{"image_id": i, "counts": dict(c)} for i, c in per_image.items()] + [
                  {"image_id": 999, "counts": {"object": 50.0}}]}  # not a calibration image: ignored
    got = count_scale("auto", counts, gt)
    scale, before, after = slow_count_scale(gt, counts)
    assert got["scale"] == pytest.approx(scale) and got["clipped"] == (factor > 4)
    assert got["count_error_before"] == pytest.approx(before) and got["count_error_after"] == pytest.approx(after)
    assert got["images"] == 15 and got["method"].startswith("fitted")


def test_settings():
    gt = {"images": [{"id": 1}], "annotations": [{"image_id": 1}, {"image_id": 1}]}
    counts = {"count_classes": "object", "images": [{"image_id": 1, "counts": {"object": 4.0}}]}
    assert count_scale("none") == {"setting": "none", "scale": 1.0, "method": "off"}
    assert count_scale(1.0, counts, gt)["method"] == "off"
    fixed = count_scale(0.5, counts, gt)
    assert (fixed["scale"], fixed["method"], fixed["count_error_before"], fixed["count_error_after"]) == (0.5, "fixed", 2, 0)
    assert count_scale("auto")["scale"] == 1.0 and count_scale("auto")["method"].startswith("not fitted")
    assert count_scale("auto", counts, gt)["scale"] == 0.5
    for bad in (0, -1.0, float("nan"), "sometimes", True):
        with pytest.raises(ValueError, match="count scale should be"):
            count_scale(bad)


def quiet(message):
    pass


CALIBRATION = ['calibration.instances="cal_gt.json"', 'calibration.images="cal_images"', "rounds=1"]


def over_counting_world(folder):
    """The Context's domain gap in small: the detector finds every product, the counter counts 1.6x as many, so
    no rounded count (1.6 -> 2, 3.2 -> 3, 4.8 -> 5, ...) equals the detections."""
    gt = json.loads((folder / "pool_gt.json").read_text())
    candidates = {}
    for ann in gt["annotations"]:
        candidates.setdefault(str(ann["image_id"]), []).append(
            {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"], "score": 0.9})
    view = {image: dict(Counter(str(d["category_id"]) for d in dets)) for image, dets in candidates.items()}
    write_json(candidates, folder / "candidates.json")
    write_json(view, folder / "view_counts.json")
    return ["learner.kwargs.count_factor=1.6", *CALIBRATION]


def test_an_over_counting_view_agrees_only_once_calibrated(toy_world, tmp_path):
    overrides = over_counting_world(toy_world.parent)
    stats = {}
    for scale in ("none", "auto"):
        run_loop(load_config(toy_world, [*overrides, f"selection.count_scale={scale}", "selection.min_share=0"]),
                 workdir=tmp_path / scale, log=quiet)
        stats[scale] = json.loads((tmp_path / scale / "round_001" / "selection.json").read_text())
    assert stats["none"]["selected_images"] == 0 and stats["none"]["count_calibration"]["method"] == "off"
    assert stats["auto"]["selected_images"] == stats["auto"]["agreeing_images"] == 30
    fitted = stats["auto"]["count_calibration"]
    assert fitted["split"] == "calibration" and fitted["method"] == "fitted" and fitted["images"] == 10
    assert fitted["scale"] == pytest.approx(1 / 1.6) == fitted["true_objects"] / fitted["counted"]
    assert fitted["count_error_after"] == 0 < fitted["count_error_before"]
    assert stats["auto"]["count_scale"] == fitted["scale"]
