"""RPC-scale evaluation: rpc-metrics against the way the official RPC tool works, in the same run.

Run with ``make bench`` (or ``pytest packages/rpc-metrics/benchmarks --benchmark-enable``). The case has
24,000 checkout images, 200 categories, about 12 objects and 14 detections per image; set
``RPC_METRICS_BENCH_IMAGES`` to shrink it. The summary line prints the speed-up over the baseline and the
peak memory of the CLI process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rpc_metrics import evaluate
from rpc_metrics.counting import count_matrix, counting_metrics
from rpc_metrics.io import load_json, write_json
from rpc_metrics.synthetic import make_case
from rpc_metrics.threshold import correct_intervals, exact_search

N_IMAGES = int(os.environ.get("RPC_METRICS_BENCH_IMAGES", "24000"))
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rpc_case")
    gt, results = make_case(N_IMAGES, 200, seed=0, false_positives=2.5)
    write_json(gt, folder / "gt.json")
    write_json(results, folder / "results.json")
    return folder


def _cli(folder: Path) -> None:
    command = [sys.executable, "-m", "rpc_metrics.cli", "evaluate", str(folder / "results.json"),
               str(folder / "gt.json"), "--json", str(folder / "rows.json")]
    subprocess.run(command, check=True, capture_output=True)


def test_full_cli_evaluation(benchmark, case):
    """End to end: process start, JSON parsing, validation, 4 rows, oracle exact threshold, mAP."""
    benchmark.pedantic(_cli, args=(case,), rounds=3, iterations=1, warmup_rounds=0)
    TIMES["cli"] = benchmark.stats.stats.median
    # ru_maxrss of children: the largest CLI process so far (KiB on Linux).
    TIMES["cli_max_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = json.loads((case / "rows.json").read_text())["rows"]
    assert [r["level"] for r in rows] == ["easy", "medium", "hard", "averaged"]


def test_evaluate_without_map(benchmark, case):
    """``evaluate(..., compute_map=False)`` on loaded JSON objects: validation, conversion, 4 rows, exact search."""
    gt, results = load_json(case / "gt.json"), load_json(case / "results.json")
    report = benchmark.pedantic(evaluate, args=(results, gt), kwargs={"compute_map": False},
                                rounds=3, iterations=1, warmup_rounds=1)
    TIMES["evaluate_no_map"] = benchmark.stats.stats.median
    assert len(report.rows) == 4


def counting_rows(rows, det_image, det_category, det_score, gt_counts):
    """The counting metrics of every row at its exact oracle threshold, from arrays (public functions only)."""
    out = {}
    for level, mask in rows.items():
        local = np.cumsum(mask) - 1
        in_row = mask[det_image]
        image, category, score = local[det_image[in_row]], det_category[in_row], det_score[in_row]
        truth = gt_counts[mask]
        choice = exact_search(correct_intervals(image, category, score, truth))
        keep = score >= choice.threshold
        out[level] = counting_metrics(count_matrix(image[keep], category[keep], *truth.shape), truth)
    return out


def test_counting_metrics_exact_search(benchmark, case):
    """Counting metrics of the 4 rows with the exact search, on arrays (what a training loop would hold)."""
    gt, results = load_json(case / "gt.json"), load_json(case / "results.json")
    image_ids = np.array(sorted(im["id"] for im in gt["images"]))
    levels = np.array([im["level"] for im in sorted(gt["images"], key=lambda im: im["id"])])
    rows = {lv: levels == lv for lv in ("easy", "medium", "hard")} | {"averaged": np.ones(len(levels), bool)}
    det_image = np.searchsorted(image_ids, [d["image_id"] for d in results])
    det_category = np.array([d["category_id"] - 1 for d in results])
    det_score = np.array([d["score"] for d in results])
    gt_counts = count_matrix(np.searchsorted(image_ids, [a["image_id"] for a in gt["annotations"]]),
                             np.array([a["category_id"] - 1 for a in gt["annotations"]]), len(image_ids), 200)
    metrics = benchmark.pedantic(counting_rows, args=(rows, det_image, det_category, det_score, gt_counts),
                                 rounds=5, iterations=1, warmup_rounds=1)
    TIMES["counting"] = benchmark.stats.stats.median
    expected = evaluate(results, gt, compute_map=False)
    assert metrics["averaged"].cacc == expected.row("averaged").cacc


def official_way(results_path: Path, gt_path: Path) -> dict:
    """What the published tool does: per row, 40 grid thresholds each recounted with a Python loop over the
    detections, then pycocotools' COCOeval of the row."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_all, results_all = load_json(gt_path), load_json(results_path)
    n_categories = len(gt_all["categories"])
    table = {}
    for level in ("averaged", "easy", "medium", "hard"):
        images = [im for im in gt_all["images"] if level == "averaged" or im["level"] == level]
        ids = {im["id"] for im in images}
        row_of = {im["id"]: i for i, im in enumerate(images)}
        anns = [a for a in gt_all["annotations"] if a["image_id"] in ids]
        results = [d for d in results_all if d["image_id"] in ids]
        truth = np.zeros((len(images), n_categories), np.float32)
        for a in anns:
            truth[row_of[a["image_id"]], a["category_id"] - 1] += 1

        def cacc_at(threshold, results=results, truth=truth, row_of=row_of):
            pred = np.zeros_like(truth)
            for d in results:
                if d["score"] >= threshold:
                    pred[row_of[d["image_id"]], d["category_id"] - 1] += 1
            return float(np.mean(np.all(pred == truth, axis=1)))

        low, high = 0.01, 0.99
        for _ in range(4):
            grid = np.linspace(low, high, 10)
            caccs = [cacc_at(t) for t in grid]
            top = sorted(range(10), key=lambda i: -caccs[i])[:3]
            low, high = grid[top].min(), grid[top].max()
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = {**gt_all, "images": images, "annotations": anns}
            coco_gt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        table[level] = (max(caccs), coco_eval.stats[0])
    return table


def test_baseline_official_way(benchmark, case, capsys):
    """The baseline, measured in the same run; prints the speed-up and the memory figure."""
    benchmark.pedantic(official_way, args=(case / "results.json", case / "gt.json"), rounds=1, iterations=1)
    TIMES["baseline"] = benchmark.stats.stats.median
    if "cli" in TIMES:
        with capsys.disabled():
            print(
                f"\nrpc-metrics on {N_IMAGES} images: CLI end to end {TIMES['cli']:.2f} s "
                f"(peak RSS {TIMES['cli_max_rss_mib']:.0f} MiB); counting metrics + exact search on arrays "
                f"{TIMES.get('counting', float('nan')):.2f} s, evaluate() without mAP on loaded JSON "
                f"{TIMES.get('evaluate_no_map', float('nan')):.2f} s; "
                f"official way {TIMES['baseline']:.1f} s -> {TIMES['baseline'] / TIMES['cli']:.0f}x faster "
                f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)"
            )
