import numpy as np
import pytest

from rpc_metrics.counting import CountingAccumulator, count_matrix, counting_metrics


def slow_metrics(pred, gt):
    """The definitions, written out with loops."""
    n, k = len(pred), len(pred[0])
    exact = sum(all(pred[i][j] == gt[i][j] for j in range(k)) for i in range(n))
    acd = sum(abs(pred[i][j] - gt[i][j]) for i in range(n) for j in range(k)) / n
    ccd, ciou = [], []
    for j in range(k):
        g = sum(gt[i][j] for i in range(n))
        d = sum(abs(pred[i][j] - gt[i][j]) for i in range(n))
        lo = sum(min(pred[i][j], gt[i][j]) for i in range(n))
        hi = sum(max(pred[i][j], gt[i][j]) for i in range(n))
        if g:
            ccd.append(d / g)
        if hi:
            ciou.append(lo / hi)
    return exact / n, acd, (sum(ccd) / len(ccd) if ccd else None), (sum(ciou) / len(ciou) if ciou else None)


@pytest.mark.parametrize("seed", range(6))
def test_matches_definitions(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 3, (30, 7)) * (rng.random((30, 7)) < 0.4)
    gt[:, 3] = 0  # a category absent from every image
    pred = np.clip(gt + rng.integers(-1, 2, gt.shape) * (rng.random(gt.shape) < 0.2), 0, None)
    m = counting_metrics(pred, gt)
    cacc, acd, mccd, mciou = slow_metrics(pred.tolist(), gt.tolist())
    assert m.cacc == pytest.approx(cacc) and m.acd == pytest.approx(acd)
    assert m.mccd == pytest.approx(mccd) and m.mciou == pytest.approx(mciou)
    assert m.undefined_mccd == int((gt.sum(0) == 0).sum())
    assert m.undefined_mciou == int((np.maximum(gt, pred).sum(0) == 0).sum())


def test_empty_predictions():
    gt = np.array([[1, 0, 2], [0, 0, 1]])
    m = counting_metrics(np.zeros_like(gt), gt)
    assert m.cacc == 0 and m.acd == 2 and m.mccd == 1 and m.mciou == 0
    assert m.undefined_mccd == 1 and m.undefined_mciou == 1


def test_nothing_defined_is_none_not_nan():
    m = counting_metrics(np.zeros((2, 3), int), np.zeros((2, 3), int))
    assert m.cacc == 1 and m.mccd is None and m.mciou is None and m.undefined_mciou == 3


def test_prediction_without_ground_truth_counts_in_ciou_only():
    m = counting_metrics(np.array([[0, 2]]), np.array([[1, 0]]))
    assert m.mccd == 1.0 and m.undefined_mccd == 1
    assert m.mciou == 0.0 and m.undefined_mciou == 0


@pytest.mark.parametrize("seed", range(3))
def test_accumulator_equals_functional(seed):
    rng = np.random.default_rng(seed)
    gt, pred = rng.integers(0, 3, (25, 5)), rng.integers(0, 3, (25, 5))
    acc = CountingAccumulator(num_categories=5)
    for i in range(0, 24, 4):
        acc.update(pred[i:i + 4], gt[i:i + 4])
    acc.update(pred[24], gt[24])  # a single image as a vector
    assert acc.compute() == counting_metrics(pred, gt)
    acc.reset()
    assert acc.compute().n_images == 0


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="N images, K categories"):
        counting_metrics(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="expected 4 categories"):
        CountingAccumulator(4).update([1, 2], [1, 2])


def test_count_matrix():
    m = count_matrix(np.array([0, 0, 2]), np.array([1, 1, 0]), 3, 2)
    assert m.tolist() == [[0, 2], [0, 0], [1, 0]]


def test_docstring_examples_run():
    import doctest

    import rpc_metrics.counting

    assert doctest.testmod(rpc_metrics.counting).failed == 0
