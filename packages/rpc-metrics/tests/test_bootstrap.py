"""Bootstrap intervals and paired comparisons against slow references that duplicate the resampled images."""

import math

import numpy as np
import pytest

from rpc_metrics import cocoeval, compare, evaluate
from rpc_metrics.bootstrap import (
    METRICS,
    counting_resamples,
    multiplicities,
    percentile_interval,
    resample_indices,
    row_intervals,
    row_resamples,
)
from rpc_metrics.counting import counting_metrics
from rpc_metrics.evaluate import _prepare
from rpc_metrics.io import FormatError
from rpc_metrics.synthetic import make_case as synthetic_case

# --------------------------------------------------------------------------- slow, obvious references


def duplicated(gt, results, image_ids):
    """The dataset of the images ``image_ids`` (repeats allowed), each copy a new image: ids 1, 2, ... in the
    order given, annotation ids renumbered, detections copied with their image."""
    by_id = {im["id"]: im for im in gt["images"]}
    images, annotations, detections = [], [], []
    for new_id, old_id in enumerate(image_ids, start=1):
        images.append({**by_id[old_id], "id": new_id})
        annotations += [{**a, "id": len(annotations) + k + 1, "image_id": new_id}
                        for k, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old_id)]
        detections += [{**d, "image_id": new_id} for d in results if d["image_id"] == old_id]
    return {**gt, "images": images, "annotations": annotations}, detections


def row_image_ids(gt, level):
    return sorted(im["id"] for im in gt["images"] if level == "averaged" or im["level"] == level)


def loop_row_values(gt, results, level, threshold, n_boot, seed):
    """Every metric of every resample of a row, each from ``evaluate`` on the explicitly duplicated images
    (copies of one image next to each other, as the weighted accumulation orders them)."""
    ids = row_image_ids(gt, level)
    values = {metric: [] for metric in METRICS}
    for draw in resample_indices(len(ids), n_boot, seed):
        dup_gt, dup_results = duplicated(gt, results, [ids[i] for i in sorted(draw)])
        row = evaluate(dup_results, dup_gt, protocol="fixed", threshold=threshold, levels=["averaged"]).rows[0]
        for metric in METRICS:
            value = getattr(row, metric)
            values[metric].append(np.nan if value is None else value)
    return {metric: np.array(v) for metric, v in values.items()}


def loop_counting(pred, gt, n_boot, seed):
    """counting_metrics on the resampled rows, one resample at a time."""
    out = {metric: [] for metric in ("cacc", "acd", "mccd", "mciou")}
    for draw in resample_indices(len(gt), n_boot, seed):
        m = counting_metrics(pred[draw], gt[draw])
        for metric in out:
            value = getattr(m, metric)
            out[metric].append(np.nan if value is None else value)
    return {metric: np.array(v) for metric, v in out.items()}


def random_counts(seed, n_images=25, n_categories=6):
    rng = np.random.default_rng(seed)
    gt = rng.poisson(0.8, (n_images, n_categories))
    gt[:, -1] = 0  # a category absent from every image: never defined for mCCD
    pred = np.clip(gt + rng.integers(-1, 2, gt.shape) * (rng.random(gt.shape) < 0.3), 0, None)
    pred[:, -1] = 0  # ... nor for mCIoU
    return pred, gt


def assert_values_equal(got, expected, rel=1e-12):
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=rel, atol=1e-15)


def assert_interval_close(got, expected):
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------- resampling


def test_resamples_are_numpy_default_rng_draws_and_their_multiplicities():
    indices = resample_indices(7, 50, seed=3)
    assert np.array_equal(indices, np.random.default_rng(3).integers(0, 7, size=(50, 7)))
    assert np.array_equal(indices, resample_indices(7, 50, seed=3))
    weights = multiplicities(indices)
    assert np.array_equal(weights, np.stack([np.bincount(row, minlength=7) for row in indices]))
    assert resample_indices(0, 4, seed=0).shape == (4, 0)


@pytest.mark.parametrize("seed", range(5))
def test_counting_resamples_equal_counting_metrics_on_duplicated_images(seed):
    pred, gt = random_counts(seed)
    indices = resample_indices(len(gt), 200, seed)
    got = counting_resamples(pred, gt, multiplicities(indices))
    expected = loop_counting(pred, gt, 200, seed)
    for metric in expected:
        assert_values_equal(got[metric], expected[metric])
    intervals = row_intervals(pred, gt, n_boot=200, seed=seed, confidence=0.9)
    for metric in expected:
        assert_interval_close(intervals[metric], percentile_interval(expected[metric], 0.9))
    assert intervals["map50"] is None and intervals["mmap"] is None


def test_undefined_resamples_are_left_out_and_a_category_absent_everywhere_changes_nothing():
    pred, gt = random_counts(4)
    weights = multiplicities(resample_indices(len(gt), 300, 1))
    with_absent = counting_resamples(pred, gt, weights)
    without = counting_resamples(pred[:, :-1], gt[:, :-1], weights)
    for metric in with_absent:
        assert_values_equal(with_absent[metric], without[metric], rel=0)
    # One image with ground truth among empty ones: resamples that miss it have no defined mCCD.
    gt = np.zeros((6, 2), int)
    gt[0, 0] = 2
    pred = gt.copy()
    values = counting_resamples(pred, gt, multiplicities(resample_indices(6, 400, 0)))
    missed = np.isnan(values["mccd"])
    assert missed.any() and not missed.all()
    assert percentile_interval(values["mccd"], 0.95) == [0.0, 0.0]
    assert percentile_interval(np.full(5, np.nan), 0.95) is None


def test_one_image_and_all_images_right():
    pred, gt = np.array([[2, 0, 1]]), np.array([[1, 0, 1]])
    one = row_intervals(pred, gt, n_boot=50, seed=0, confidence=0.95)
    point = counting_metrics(pred, gt)
    assert one["cacc"] == [0.0, 0.0] and one["acd"] == [1.0, 1.0]
    assert one["mccd"] == [point.mccd] * 2 and one["mciou"] == [point.mciou] * 2
    gt = np.random.default_rng(0).poisson(1.0, (30, 5))
    right = row_intervals(gt, gt, n_boot=100, seed=0, confidence=0.95)
    assert right["cacc"] == [1.0, 1.0] and right["acd"] == [0.0, 0.0]
    assert right["mccd"] == [0.0, 0.0] and right["mciou"] == [1.0, 1.0]
    empty = row_intervals(np.zeros((0, 3)), np.zeros((0, 3)), n_boot=10, seed=0, confidence=0.95)
    assert empty == dict.fromkeys(METRICS)


def test_one_image_gives_point_intervals_for_every_metric(make_case):
    gt, results = make_case(4, n_images=3, with_levels=False)
    keep = gt["images"][1]["id"]
    gt = {**gt, "images": [gt["images"][1]], "annotations": [a for a in gt["annotations"] if a["image_id"] == keep]}
    results = [d for d in results if d["image_id"] == keep]
    row = evaluate(results, gt, protocol="fixed", threshold=0.3, intervals=20).rows[0]
    assert row.n_images == 1 and row.map50 is not None
    for metric in METRICS:
        value = getattr(row, metric)
        assert row.intervals[metric] == (None if value is None else [value, value]), metric


# --------------------------------------------------------------------------- weighted COCO accumulation


def matching_of(gt, results):
    p, _, _ = _prepare(results, gt, require_levels=False)
    n_categories = len(p.category_ids)
    return p, cocoeval.match(p.gt, p.dt, n_categories), n_categories


@pytest.mark.parametrize("seed", range(6))
def test_weights_of_zero_and_one_give_the_unweighted_precision_table_exactly(seed, make_case):
    gt, results = make_case(seed, n_images=30)
    p, m, k = matching_of(gt, results)
    layout = cocoeval.category_layout(m, k)
    rng = np.random.default_rng(seed)
    all_images = np.ones(len(p.image_ids), bool)
    expected = cocoeval.precision_table(m, all_images, k)
    assert np.array_equal(cocoeval.weighted_precision_table(layout, all_images.astype(int)), expected)
    for _ in range(4):
        mask = rng.random(len(p.image_ids)) < 0.6
        expected = cocoeval.precision_table(m, mask, k)
        row_layout = cocoeval.category_layout(m, k, mask)
        assert np.array_equal(cocoeval.weighted_precision_table(layout, mask.astype(int)), expected)
        assert np.array_equal(cocoeval.weighted_precision_table(row_layout, np.ones(mask.sum())), expected)
        assert cocoeval.summarize(cocoeval.weighted_precision_table(row_layout, np.ones(mask.sum()))) == \
            cocoeval.summarize(expected)


@pytest.mark.parametrize("seed", range(6))
def test_weighted_precision_equals_pycocotools_on_duplicated_images(seed, make_case, coco_reference):
    # Scores with 6 decimals: no image holds two detections of one category with equal scores, the one case
    # where pycocotools' order of copies differs (see cocoeval.weighted_precision_table).
    gt, results = make_case(seed, n_images=12, score_decimals=6)
    p, m, k = matching_of(gt, results)
    ids = p.image_ids.tolist()
    rng = np.random.default_rng(seed)
    one_twice = np.ones(len(ids), int)
    one_twice[seed % len(ids)] = 2
    for weights in (one_twice, np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))):
        dup_gt, dup_results = duplicated(gt, results, np.repeat(ids, weights).tolist())
        mmap, map50, precision = coco_reference(dup_gt, dup_results)
        got = cocoeval.weighted_precision_table(cocoeval.category_layout(m, k), weights)
        np.testing.assert_array_equal(got, precision)
        assert cocoeval.summarize(got) == pytest.approx((mmap, map50), abs=1e-15)


def test_weighted_precision_with_scores_tied_across_images(coco_reference):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3)]
    box = [10.0, 10.0, 20.0, 20.0]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": box, "area": 400.0, "iscrowd": 0}
                   for i in (1, 2, 3)]
    results = [{"image_id": 1, "category_id": 1, "bbox": [50.0, 50.0, 20.0, 20.0], "score": 0.9},  # false positive
               {"image_id": 2, "category_id": 1, "bbox": box, "score": 0.9},
               {"image_id": 3, "category_id": 1, "bbox": box, "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": box, "score": 0.5}]
    gt = {"images": images, "categories": [{"id": 1, "name": "a"}], "annotations": annotations}
    _, m, k = matching_of(gt, results)
    for weights in ([2, 1, 1], [1, 3, 0], [0, 1, 2]):
        dup_gt, dup_results = duplicated(gt, results, np.repeat([1, 2, 3], weights).tolist())
        _, _, precision = coco_reference(dup_gt, dup_results)
        np.testing.assert_array_equal(cocoeval.weighted_precision_table(cocoeval.category_layout(m, k), weights),
                                      precision)


# --------------------------------------------------------------------------- evaluate(intervals=...)


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_intervals_equal_a_loop_over_duplicated_datasets(seed, make_case):
    gt, results = make_case(seed, n_images=12, score_decimals=6)
    report = evaluate(results, gt, intervals=12, interval_seed=seed + 5, confidence=0.8)
    assert report.bootstrap == {"n_boot": 12, "seed": seed + 5, "confidence": 0.8}
    for row in report.rows:
        expected = loop_row_values(gt, results, row.level, row.threshold, 12, seed + 5)
        for metric in METRICS:
            assert_interval_close(row.intervals[metric], percentile_interval(expected[metric], 0.8))


def test_intervals_are_deterministic_leave_the_rows_unchanged_and_print(make_case):
    gt, results = make_case(3, n_images=30)
    plain = evaluate(results, gt)
    first = evaluate(results, gt, intervals=40, interval_seed=1)
    again = evaluate(results, gt, intervals=40, interval_seed=1)
    other = evaluate(results, gt, intervals=40, interval_seed=2)
    assert [r.intervals for r in first.rows] == [r.intervals for r in again.rows]
    assert [r.intervals for r in first.rows] != [r.intervals for r in other.rows]
    for a, b in zip(plain.rows, first.rows, strict=True):
        assert (a.threshold, a.cacc, a.map50) == (b.threshold, b.cacc, b.map50) and a.intervals is None
    row = first.row("averaged")
    lo, hi = row.intervals["cacc"]
    assert f"| averaged | default | {100 * row.cacc:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] |" in first.to_markdown()
    assert "intervals: 95% percentile bootstrap" in first.to_markdown()
    assert "intervals" not in plain.to_dict()["rows"][0] and "bootstrap" not in plain.to_dict()
    assert first.to_dict()["rows"][-1]["intervals"] == row.intervals
    no_map = evaluate(results, gt, intervals=10, compute_map=False)
    assert no_map.row("averaged").intervals["map50"] is None
    reference = evaluate(results, gt, intervals=10, map_backend="pycocotools", levels=["averaged"])
    assert reference.row("averaged").intervals == evaluate(results, gt, intervals=10, levels=["averaged"]).rows[0].intervals


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"intervals": -1}, "intervals should be an integer >= 0"),
    ({"intervals": 10, "confidence": 1.0}, "confidence should be a number strictly between 0 and 1"),
    ({"intervals": 10, "confidence": math.nan}, "confidence should be"),
    ({"protocol": "fixed", "threshold": math.nan}, "threshold should be a finite number"),
    ({"intervals": 10, "interval_seed": -1}, "seed should be an integer >= 0"),
])
def test_evaluate_refuses_bad_bootstrap_arguments(make_case, kwargs, message):
    gt, results = make_case(0, n_images=6)
    with pytest.raises(ValueError, match=message):
        evaluate(results, gt, **kwargs)


# --------------------------------------------------------------------------- compare


def perturbed(results, seed, share=0.1):
    """Model B: model A with a few detections' scores moved (strongly correlated with A)."""
    rng = np.random.default_rng(seed)
    out = []
    for d in results:
        if rng.random() < share:
            d = {**d, "score": float(np.clip(d["score"] + rng.normal(0, 0.3), 0.0, 1.0))}
        out.append(d)
    return out


def test_b_is_a_gives_zero_differences(make_case):
    gt, results = make_case(2, n_images=24)
    report = compare(results, results, gt, protocol="oracle", n_boot=30)
    for row in report.rows:
        assert row.threshold_a == row.threshold_b and row.only_a == row.only_b == 0
        for metric, m in row.metrics.items():
            assert m.a == m.b and m.difference == 0, metric
            assert m.interval == [0.0, 0.0] or (m.a is None and m.interval is None), metric
    assert not report.above_zero("cacc") and not report.below_zero("acd")


@pytest.mark.parametrize("seed", range(3))
def test_paired_differences_equal_a_loop_over_duplicated_datasets(seed, make_case):
    gt, results_a = make_case(seed, n_images=12, score_decimals=6)
    results_b = perturbed(results_a, seed, share=0.3)
    report = compare(results_a, results_b, gt, protocol="fixed", threshold_a=0.3, threshold_b=0.45, n_boot=10,
                     seed=seed, confidence=0.8)
    for row in report.rows:
        a = loop_row_values(gt, results_a, row.level, 0.3, 10, seed)
        b = loop_row_values(gt, results_b, row.level, 0.45, 10, seed)
        for metric in METRICS:
            assert_interval_close(row.metrics[metric].interval, percentile_interval(b[metric] - a[metric], 0.8))


@pytest.mark.parametrize("protocol", ["transfer", "oracle", "fixed"])
def test_each_model_is_evaluated_as_evaluate_does(protocol, make_case):
    gt, results_a = make_case(5, n_images=30)
    results_b = perturbed(results_a, 5, share=0.4)
    val_gt, val_a = make_case(6, n_images=30)
    val_b = perturbed(val_a, 6, share=0.4)
    options = {"transfer": {"val_gt": val_gt}, "oracle": {}, "fixed": {}}[protocol]
    report = compare(results_a, results_b, gt, protocol=protocol, val_results_a=val_a, val_results_b=val_b,
                     threshold_a=0.4 if protocol == "fixed" else None,
                     threshold_b=0.55 if protocol == "fixed" else None, n_boot=20, **options)
    for side, results, val, threshold in (("a", results_a, val_a, 0.4), ("b", results_b, val_b, 0.55)):
        expected = evaluate(results, gt, protocol=protocol, val_results=val if protocol == "transfer" else None,
                            threshold=threshold if protocol == "fixed" else None, **options)
        for row, exp in zip(report.rows, expected.rows, strict=True):
            assert getattr(row, f"threshold_{side}") == exp.threshold
            for metric in METRICS:
                assert getattr(row.metrics[metric], side) == getattr(exp, metric), (row.level, metric)
    for row in report.rows:
        assert row.only_a + row.only_b + row.both + row.neither == row.n_images
        assert row.metrics["cacc"].a == pytest.approx((row.only_a + row.both) / row.n_images)
        assert row.metrics["cacc"].b == pytest.approx((row.only_b + row.both) / row.n_images)


def test_paired_interval_is_narrower_than_unpaired_on_correlated_models(make_case):
    gt, results_a = make_case(7, n_images=90)
    results_b = perturbed(results_a, 7, share=0.05)
    report = compare(results_a, results_b, gt, protocol="fixed", threshold_a=0.5, threshold_b=0.5, n_boot=400,
                     levels=["averaged"], compute_map=False)
    paired = report.row("averaged").metrics
    p_a, _, _ = _prepare(results_a, gt, require_levels=False)
    p_b, _, _ = _prepare(results_b, gt, require_levels=False)
    from rpc_metrics.evaluate import _row_count_matrices

    every = np.ones(len(p_a.image_ids), bool)
    pred_a, truth = _row_count_matrices(p_a, every, 0.5)
    pred_b, _ = _row_count_matrices(p_b, every, 0.5)
    # Unpaired: A and B resampled independently (different seeds).
    a = row_resamples(pred_a, truth, resample_indices(len(truth), 400, 0))
    b = row_resamples(pred_b, truth, resample_indices(len(truth), 400, 1))
    for metric in ("cacc", "acd", "mciou"):
        lo, hi = percentile_interval(b[metric] - a[metric], 0.95)
        p_lo, p_hi = paired[metric].interval
        assert p_hi - p_lo < (hi - lo) / 2, metric


def test_report_helpers_markdown_and_dict():
    gt, results_a = synthetic_case(30, 10, seed=8)
    worse = [d for i, d in enumerate(results_a) if i % 4]  # B lost a quarter of A's detections
    report = compare(results_a, worse, gt, protocol="fixed", threshold_a=0.3, threshold_b=0.3, n_boot=200,
                     levels=["averaged"])
    row = report.row("averaged")
    assert report.below_zero("cacc") and report.above_zero("acd")
    assert not report.above_zero("cacc") and not report.below_zero("acd")
    text = report.to_markdown()
    m = row.metrics["cacc"]
    lo, hi = m.interval
    assert (f"| averaged | cAcc | {100 * m.a:.2f}% | {100 * m.b:.2f}% | {100 * m.difference:+.2f} | "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] |") in text
    assert f"| averaged | 30 | {row.only_a} | {row.only_b} | {row.both} | {row.neither} | 0.3 | 0.3 |" in text
    out = report.to_dict()
    assert out["rows"][0]["metrics"]["cacc"] == {"a": m.a, "b": m.b, "difference": m.difference, "interval": m.interval}
    assert out["n_boot"] == 200 and out["protocol"] == "fixed"


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"protocol": "fixed", "threshold_a": 0.5}, ValueError, "needs threshold_a and threshold_b"),
    ({"protocol": "fixed", "threshold_a": 0.5, "threshold_b": math.nan}, ValueError, "threshold_b should be a finite"),
    ({}, ValueError, "protocol 'transfer' needs val_results_a, val_results_b and val_gt"),
    ({"protocol": "oracle", "n_boot": 0}, ValueError, "n_boot should be an integer >= 1"),
    ({"protocol": "oracle", "confidence": 0.0}, ValueError, "confidence should be"),
    ({"protocol": "oracle", "levels": ["expert"]}, ValueError, "unknown level"),
])
def test_compare_refuses_bad_arguments(make_case, kwargs, error, message):
    gt, results = make_case(0, n_images=6)
    with pytest.raises(error, match=message):
        compare(results, results, gt, **kwargs)


def test_compare_refuses_results_of_other_images(make_case):
    gt, results = make_case(0, n_images=6)
    _, other = make_case(1, n_images=9)
    with pytest.raises(FormatError, match=r"image_id \d+ is not in the ground truth"):
        compare(results, other, gt, protocol="oracle", n_boot=5)


def test_docstring_examples_run():
    import doctest

    import rpc_metrics.bootstrap

    assert doctest.testmod(rpc_metrics.bootstrap).failed == 0
