import numpy as np
import pytest

from rpc_metrics.counting import count_matrix
from rpc_metrics.threshold import CorrectIntervals, correct_intervals, exact_search, grid_search


def random_detections(seed, n_images=25, n_categories=5, decimals=2):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 3, (n_images, n_categories)) * (rng.random((n_images, n_categories)) < 0.5)
    n = int(gt.sum() + rng.integers(0, 30))
    det_image = rng.integers(0, n_images, n)
    det_cat = rng.integers(0, n_categories, n)
    # Detections of true objects score high, the rest low, with ties from rounding.
    truth = rng.random(n) < 0.6
    score = np.where(truth, rng.uniform(0.4, 1.0, n), rng.uniform(0.0, 0.7, n)).round(decimals)
    return gt, det_image, det_cat, score


def slow_cacc(gt, det_image, det_cat, score, threshold):
    keep = score >= threshold
    pred = count_matrix(det_image[keep], det_cat[keep], *gt.shape)
    return float(np.mean((pred == gt).all(axis=1)))


@pytest.mark.parametrize("seed", range(8))
def test_intervals_give_the_same_cacc_as_recounting(seed):
    gt, det_image, det_cat, score = random_detections(seed)
    intervals = correct_intervals(det_image, det_cat, score, gt)
    # Every distinct score (ties at the threshold: score == t counts) and values between them.
    candidates = np.unique(np.r_[score, score + 1e-9, score - 1e-9, 0.0, 1.0, 1.5])
    for t in candidates:
        assert intervals.cacc(t) == slow_cacc(gt, det_image, det_cat, score, t)


def slow_count_error(gt, det_image, det_cat, score, threshold):
    keep = score >= threshold
    pred = count_matrix(det_image[keep], det_cat[keep], *gt.shape)
    return float(np.abs(pred - gt).sum(axis=1).mean())


@pytest.mark.parametrize("seed", range(8))
def test_intervals_give_the_same_count_error_as_recounting(seed):
    gt, det_image, det_cat, score = random_detections(seed)
    intervals = correct_intervals(det_image, det_cat, score, gt)
    for t in np.unique(np.r_[score, score + 1e-9, score - 1e-9, 0.0, 1.0, 1.5]):
        assert intervals.count_error(t) == pytest.approx(slow_count_error(gt, det_image, det_cat, score, t))


@pytest.mark.parametrize("seed", range(8))
def test_exact_search_finds_the_optimum(seed):
    gt, det_image, det_cat, score = random_detections(seed, decimals=seed % 3 + 1)
    choice = exact_search(correct_intervals(det_image, det_cat, score, gt))
    distinct = np.unique(score)
    mids = np.r_[distinct[0] / 2, (distinct[1:] + distinct[:-1]) / 2, np.nextafter(distinct[-1], np.inf)]
    brute = max(slow_cacc(gt, det_image, det_cat, score, t) for t in np.r_[mids, distinct])
    assert choice.cacc == brute
    assert slow_cacc(gt, det_image, det_cat, score, choice.threshold) == brute
    lo, hi = choice.interval
    assert lo < choice.threshold <= hi
    # Among the thresholds of the best cAcc, the lowest count error.
    tied = [t for t in np.r_[mids, distinct] if slow_cacc(gt, det_image, det_cat, score, t) == brute]
    best_error = min(slow_count_error(gt, det_image, det_cat, score, t) for t in tied)
    assert slow_count_error(gt, det_image, det_cat, score, choice.threshold) == pytest.approx(best_error)


def test_exact_search_tie_break_count_error_before_width():
    # Image 0: one object, found at 0.9. Image 1: no object, a false detection at 0.5. Image 2: two objects,
    # found at 0.2 and 0.15. Two of three images are right for 0.5 < t <= 0.9 (width 0.4; image 2 misses
    # both: error 2) and for t <= 0.15 (width 0.15; image 1 over by one: error 1).
    gt = np.array([[1, 0], [0, 0], [0, 2]])
    intervals = correct_intervals(np.array([0, 1, 2, 2]), np.array([0, 0, 1, 1]), np.array([0.9, 0.5, 0.2, 0.15]), gt)
    choice = exact_search(intervals)
    assert choice.cacc == pytest.approx(2 / 3) and choice.threshold == pytest.approx(0.075)
    assert intervals.count_error(choice.threshold) == pytest.approx(1 / 3)
    # Intervals made without error steps fall back to the widest.
    bare = CorrectIntervals(lo=intervals.lo, hi=intervals.hi, scores=intervals.scores)
    assert exact_search(bare).threshold == pytest.approx(0.7)
    with pytest.raises(ValueError, match="error steps"):
        bare.count_error(0.5)


def test_exact_search_tie_break_widest_then_lowest():
    # One image with one object: counted exactly for 0.3 < t <= 0.9 (width 0.6) and nowhere else.
    gt = np.array([[1]])
    choice = exact_search(correct_intervals(np.array([0, 0]), np.array([0, 0]), np.array([0.9, 0.3]), gt))
    assert choice.cacc == 1 and choice.threshold == pytest.approx(0.6)
    # Nothing is ever right: every interval ties at 0, the widest is [0, 0.5].
    gt = np.array([[2]])
    choice = exact_search(correct_intervals(np.array([0]), np.array([0]), np.array([0.5]), gt))
    assert choice.cacc == 0 and choice.threshold == pytest.approx(0.25)


def test_exact_search_edge_cases():
    # No detections at all: images without objects are right at any threshold.
    gt = np.array([[0, 0], [1, 0]])
    empty = np.zeros(0, dtype=np.int64)
    choice = exact_search(correct_intervals(empty, empty, np.zeros(0), gt))
    assert choice.cacc == 0.5 and choice.threshold == 0.5
    # The best threshold is above a score of exactly 1: it must stay strictly above it.
    gt = np.array([[0]])
    choice = exact_search(correct_intervals(np.array([0]), np.array([0]), np.array([1.0]), gt))
    assert choice.cacc == 1 and choice.threshold > 1.0
    # Scores outside [0, 1] (logits).
    gt = np.array([[1]])
    choice = exact_search(correct_intervals(np.array([0, 0]), np.array([0, 0]), np.array([-3.0, -5.0]), gt))
    assert choice.cacc == 1 and -5.0 < choice.threshold <= -3.0


def grid_search_as_published(gt, det_image, det_cat, score):
    """The published tool's loop, recounting at every grid threshold (pandas nlargest keeps the first)."""
    lo, hi = 0.01, 0.99
    for _ in range(4):
        xs = np.linspace(lo, hi, 10)
        caccs = [slow_cacc(gt, det_image, det_cat, score, t) for t in xs]
        top = sorted(range(10), key=lambda i: -caccs[i])[:3]
        lo, hi = min(xs[top]), max(xs[top])
    return xs[int(np.argmax(caccs))], max(caccs)


@pytest.mark.parametrize("seed", range(6))
def test_grid_search_is_the_published_procedure(seed):
    gt, det_image, det_cat, score = random_detections(seed)
    choice = grid_search(correct_intervals(det_image, det_cat, score, gt))
    threshold, cacc = grid_search_as_published(gt, det_image, det_cat, score)
    assert choice.threshold == threshold and choice.cacc == cacc
    assert exact_search(correct_intervals(det_image, det_cat, score, gt)).cacc >= cacc
