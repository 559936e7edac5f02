"""RPC-scale error breakdown: ``analyse_errors`` against a per-image Python loop (the obvious way), same run.

    .venv/bin/python -m pytest packages/rpc-metrics/benchmarks/test_bench_errors.py --benchmark-enable -s

Same case as ``test_bench_evaluate.py`` (24,000 images, 200 categories; ``RPC_METRICS_BENCH_IMAGES`` shrinks
it), one fixed threshold. The baseline groups the detections and objects by image with dicts and matches them
greedily per image with Python loops, the way a script written for the question would.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest

from rpc_metrics.errors import DEFAULT_SIZE_BINS, _outcomes, _row_errors, analyse_errors
from rpc_metrics.evaluate import ROWS, _prepare, _row_masks
from rpc_metrics.synthetic import make_case

N_IMAGES = int(os.environ.get("RPC_METRICS_BENCH_IMAGES", "24000"))
THRESHOLD = 0.5
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def case():
    return make_case(N_IMAGES, 200, seed=0, false_positives=2.5)


def _iou(d, g):
    w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    return 0.0 if w <= 0 or h <= 0 else w * h / (d[2] * d[3] + g[2] * g[3] - w * h)


def _greedy(dets, gts, same_category):
    taken, pairs = set(), {}
    for i, d in sorted(enumerate(dets), key=lambda x: -x[1]["score"]):
        best, best_iou = None, 0.5
        for j, g in enumerate(gts):
            if j in taken or (same_category and g["category_id"] != d["category_id"]):
                continue
            v = _iou(d["bbox"], g["bbox"])
            if v >= best_iou:
                best, best_iou = j, v
        if best is not None:
            taken.add(best)
            pairs[i] = best
    return pairs


def per_image_loop(gt: dict, results: list) -> dict[str, int]:
    """found / wrong SKU / missed / extra over all images, one image at a time."""
    gts, dets = defaultdict(list), defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd"):
            gts[a["image_id"]].append(a)
    for r in results:
        if r["score"] >= THRESHOLD:
            dets[r["image_id"]].append(r)
    totals = dict.fromkeys(("found", "wrong_sku", "missed", "extra"), 0)
    for image in {im["id"] for im in gt["images"]}:
        g, d = gts[image], dets[image]
        first = _greedy(d, g, True)
        left_d = [x for i, x in enumerate(d) if i not in first]
        used = set(first.values())
        left_g = [x for j, x in enumerate(g) if j not in used]
        second = _greedy(left_d, left_g, False)
        totals["found"] += len(first)
        totals["wrong_sku"] += len(second)
        totals["missed"] += len(left_g) - len(second)
        totals["extra"] += len(left_d) - len(second)
    return totals


def test_analyse_errors(benchmark, case):
    gt, results = case
    report = benchmark.pedantic(analyse_errors, args=(results, gt),
                                kwargs={"protocol": "fixed", "threshold": THRESHOLD}, rounds=3, iterations=1,
                                warmup_rounds=1)
    TIMES["errors"] = benchmark.stats.stats.median
    assert [r.level for r in report.rows] == ["easy", "medium", "hard", "averaged"]
    TIMES["row"] = report.row("averaged")


def breakdown(p) -> list:
    """The breakdown alone, on arrays already read and validated: one matching, four rows."""
    outcomes = _outcomes(p, THRESHOLD, 0.5)
    return [_row_errors(p, outcomes, level, mask, THRESHOLD, DEFAULT_SIZE_BINS)
            for level, mask in _row_masks(p, ROWS).items()]


def test_breakdown_on_arrays(benchmark, case):
    gt, results = case
    p, _, _ = _prepare(results, gt, require_levels=True)
    rows = benchmark.pedantic(breakdown, args=(p,), rounds=3, iterations=1, warmup_rounds=1)
    TIMES["breakdown"] = benchmark.stats.stats.median
    assert rows[-1].found > 0
    if "row" in TIMES:  # the end-to-end run above: the same breakdown
        assert rows[-1] == TIMES["row"]


def test_baseline_per_image_loop(benchmark, case, capsys):
    gt, results = case
    totals = benchmark.pedantic(per_image_loop, args=(gt, results), rounds=1, iterations=1)
    TIMES["baseline"] = benchmark.stats.stats.median
    if "row" in TIMES:
        row = TIMES["row"]
        assert totals == {k: getattr(row, k) for k in totals}
        with capsys.disabled():
            print(f"\nrpc-metrics errors on {N_IMAGES} images (4 rows): {TIMES['errors']:.2f} s with reading and "
                  f"validating the JSON objects, {TIMES.get('breakdown', float('nan')):.2f} s for the breakdown "
                  f"alone; per-image Python loop (averaged row only, no validation) {TIMES['baseline']:.2f} s -> "
                  f"{TIMES['baseline'] / TIMES.get('breakdown', float('nan')):.1f}x for the breakdown "
                  f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)")
