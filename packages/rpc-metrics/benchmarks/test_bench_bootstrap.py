"""Bootstrap intervals: the vectorised counting bootstrap against a loop over resamples, in the same run.

    .venv/bin/python -m pytest packages/rpc-metrics/benchmarks/test_bench_bootstrap.py --benchmark-enable -s

Counting: 1,000 resamples of a 1,200-image, 200-category case (``RPC_METRICS_BENCH_BOOT_IMAGES`` changes the
number of images); the baseline calls ``counting_metrics`` on each explicitly resampled count matrix. mAP: the
weighted COCO accumulation of 1,000 resamples of the averaged row of a 120-image, 20-category case (the demo's
test split), and ``evaluate(..., intervals=1000)`` of its four rows. The summary line prints the speed-up.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from rpc_metrics import evaluate
from rpc_metrics.bootstrap import counting_resamples, map_resamples, multiplicities, resample_indices
from rpc_metrics.cocoeval import category_layout, match
from rpc_metrics.counting import counting_metrics
from rpc_metrics.evaluate import _prepare, _row_count_matrices
from rpc_metrics.synthetic import make_case

N_IMAGES = int(os.environ.get("RPC_METRICS_BENCH_BOOT_IMAGES", "1200"))
N_BOOT = 1000
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def counts():
    gt, results = make_case(N_IMAGES, 200, seed=0)
    p, _, _ = _prepare(results, gt, require_levels=False)
    return _row_count_matrices(p, np.ones(len(p.image_ids), bool), 0.5)


@pytest.fixture(scope="module")
def demo_case():
    return make_case(120, 20, seed=0)


def vectorised(pred, gt):
    return counting_resamples(pred, gt, multiplicities(resample_indices(len(gt), N_BOOT, 0)))


def loop_reference(pred, gt):
    """The obvious way: counting_metrics on each resampled pair of count matrices."""
    values = [counting_metrics(pred[draw], gt[draw]) for draw in resample_indices(len(gt), N_BOOT, 0)]
    return {metric: np.array([getattr(v, metric) for v in values], dtype=float)
            for metric in ("cacc", "acd", "mccd", "mciou")}


def test_counting_vectorised(benchmark, counts):
    got = benchmark.pedantic(vectorised, args=counts, rounds=5, iterations=1, warmup_rounds=1)
    TIMES["vectorised"] = benchmark.stats.stats.median
    expected = loop_reference(*counts)
    for metric, values in expected.items():
        np.testing.assert_allclose(got[metric], values, rtol=1e-12)


def test_counting_loop_baseline(benchmark, counts):
    benchmark.pedantic(loop_reference, args=counts, rounds=3, iterations=1, warmup_rounds=0)
    TIMES["loop"] = benchmark.stats.stats.median


def test_map_resamples_averaged_row(benchmark, demo_case):
    gt, results = demo_case
    p, _, _ = _prepare(results, gt, require_levels=False)
    layout = category_layout(match(p.gt, p.dt, len(p.category_ids)), len(p.category_ids))
    weights = multiplicities(resample_indices(len(p.image_ids), N_BOOT, 0))
    values = benchmark.pedantic(map_resamples, args=(layout, weights), rounds=3, iterations=1, warmup_rounds=1)
    TIMES["map_row"] = benchmark.stats.stats.median
    assert not np.isnan(values["map50"]).any()


def test_evaluate_with_intervals(benchmark, demo_case, capsys):
    gt, results = demo_case
    report = benchmark.pedantic(evaluate, args=(results, gt), kwargs={"intervals": N_BOOT}, rounds=3, iterations=1)
    TIMES["evaluate"] = benchmark.stats.stats.median
    assert all(row.intervals["map50"] is not None for row in report.rows)
    if "loop" in TIMES and "vectorised" in TIMES:
        with capsys.disabled():
            print(
                f"\ncounting bootstrap, {N_BOOT} resamples of {N_IMAGES} images x 200 categories: vectorised "
                f"{TIMES['vectorised']:.3f} s, loop {TIMES['loop']:.2f} s -> {TIMES['loop'] / TIMES['vectorised']:.0f}x; "
                f"mAP bootstrap of the 120-image, 20-category averaged row {TIMES['map_row']:.2f} s; "
                f"evaluate(intervals={N_BOOT}) of its 4 rows {TIMES['evaluate']:.2f} s "
                f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)"
            )
