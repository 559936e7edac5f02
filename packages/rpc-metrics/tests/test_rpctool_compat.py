"""``compat="rpctool"`` against rpctool 0.1.6's procedure, written out slowly (rpctool itself needs pandas<2 and
numpy<2 and cannot share this environment).

What the reference follows (``rpctool/evaluate_v1``: ``evaluateByBbox.evaluateByJson`` and ``evaluate.py``):

- per threshold ``t``, a detection is counted when ``score >= t``; the per-image table of predicted counts gets
  an entry only when an image has a counted detection, and every metric is over the images of that table
  (N = its size): cAcc = exact images / N, ACD = summed |P - G| / N, mCCD = sum_k (sum |P - G| / sum G) / K,
  mCIoU = sum_k (sum min / sum max) / K (nan or inf for a category with a zero denominator);
- the grid: 4 rounds of ``linspace(lo, hi, 10)`` from (0.01, 0.99), each round spanning the 3 best thresholds
  of the previous (pandas ``nlargest(3)``: ties keep the first), then the first best of the last grid.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rpc_metrics import evaluate
from rpc_metrics.cli import main
from rpc_metrics.threshold import correct_intervals, grid_search

SCORES = np.array([0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])  # few distinct values: many ties


def rpctool_at(gt_counts, det_image, det_cat, score, threshold):
    """rpctool's metrics at one threshold, over the images with a counted detection."""
    n_categories = gt_counts.shape[1]
    table = {}
    for image, category, s in zip(det_image.tolist(), det_cat.tolist(), score.tolist(), strict=True):
        if s >= threshold:
            table.setdefault(image, [0] * n_categories)[category] += 1
    keys = list(table)
    if not keys:
        raise IndexError("rpctool fails here: no image has a detection at this threshold")
    pred = np.array([table[i] for i in keys], dtype=np.float32)
    gt = gt_counts[keys].astype(np.float32)
    n = len(keys)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "cAcc": np.sum(np.all(pred == gt, axis=1)) / n,
            "ACD": np.sum(np.abs(gt - pred)) / n,
            "mCCD": np.sum(np.abs(gt - pred).sum(axis=0) / gt.sum(axis=0)) / n_categories,
            "mCIoU": np.sum(np.minimum(pred, gt).sum(axis=0) / np.maximum(pred, gt).sum(axis=0)) / n_categories,
            "n": n,
            "thre": threshold,
        }


def rpctool_reference(gt_counts, det_image, det_cat, score):
    """rpctool's grid search and the metrics of its chosen row."""
    thres = [0.01, 0.99]
    for _ in range(4):
        xs = np.linspace(min(thres), max(thres), 10)
        rows = [rpctool_at(gt_counts, det_image, det_cat, score, t) for t in xs]
        best3 = sorted(range(len(xs)), key=lambda j: -rows[j]["cAcc"])[:3]
        thres = [xs[j] for j in best3]
    caccs = [row["cAcc"] for row in rows]
    return rows[caccs.index(max(caccs))]


def random_arrays(seed, n_images=30, n_categories=4):
    """Count matrix and detections: images without any detection, images whose detections all score low (they
    leave rpctool's table at the higher grid thresholds), empty images with false detections, and one score 1.0
    (rpctool needs an image at every grid threshold)."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 3, (n_images, n_categories)) * (rng.random((n_images, n_categories)) < 0.6)
    gt[rng.integers(0, n_images, 3)] = 0
    det_image, det_cat, score = [], [], []
    for i in range(n_images):
        kind = rng.random()
        if kind < 0.1:
            continue  # never in rpctool's table
        high = SCORES[:4] if kind < 0.35 else SCORES  # all low: drops out as the threshold rises
        for k in range(n_categories):
            for _ in range(int(gt[i, k])):
                if rng.random() < 0.85:
                    det_image.append(i), det_cat.append(k), score.append(rng.choice(high))
        for _ in range(int(rng.integers(0, 3))):
            det_image.append(i), det_cat.append(int(rng.integers(0, n_categories))), score.append(rng.choice(SCORES[:5]))
    det_image.append(0), det_cat.append(0), score.append(1.0)
    return gt, np.array(det_image), np.array(det_cat), np.array(score, dtype=np.float64)


def as_files(gt_counts, det_image, det_cat, score, levels=None):
    """The arrays as an RPC ground truth and a COCO results list (image i has id i + 1, category k id k + 1)."""
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 100, "height": 100,
               **({"level": levels[i]} if levels else {})} for i in range(gt_counts.shape[0])]
    anns = [{"id": n + 1, "image_id": int(i) + 1, "category_id": int(k) + 1, "bbox": [0, 0, 10, 10], "area": 100,
             "iscrowd": 0} for n, (i, k) in enumerate((i, k) for i, k in np.argwhere(gt_counts) for _ in
                                                        range(gt_counts[i, k]))]
    cats = [{"id": k + 1, "name": f"sku{k}"} for k in range(gt_counts.shape[1])]
    results = [{"image_id": int(i) + 1, "category_id": int(k) + 1, "bbox": [0, 0, 10, 10], "score": float(s)}
               for i, k, s in zip(det_image, det_cat, score, strict=True)]
    return {"images": images, "annotations": anns, "categories": cats}, results


def assert_row_is_the_reference(row, ref):
    assert row.threshold == ref["thre"] and row.cacc == ref["cAcc"] and row.n_images == ref["n"]
    assert row.acd == pytest.approx(ref["ACD"])
    for ours, undefined, theirs in ((row.mccd, row.undefined_mccd, ref["mCCD"]),
                                    (row.mciou, row.undefined_mciou, ref["mCIoU"])):
        if np.isfinite(theirs):
            assert undefined == 0 and ours == pytest.approx(theirs)
        else:  # rpctool's nan/inf: ours leaves the undefined categories out and says how many
            assert undefined > 0


@pytest.mark.parametrize("seed", range(10))
def test_compat_rpctool_is_the_reference(seed):
    arrays = random_arrays(seed)
    ref = rpctool_reference(*arrays)
    gt, results = as_files(*arrays)
    report = evaluate(results, gt, search="grid", compat="rpctool", compute_map=False)
    assert_row_is_the_reference(report.row("averaged"), ref)
    assert ref["n"] < arrays[0].shape[0]  # the quirk is exercised: images left out at the chosen threshold
    choice = grid_search(correct_intervals(arrays[1], arrays[2], arrays[3], arrays[0]), detected_only=True)
    assert (choice.threshold, choice.cacc) == (ref["thre"], ref["cAcc"])


@pytest.mark.parametrize("seed", range(3))
def test_compat_rpctool_rows_per_level(seed):
    gt_counts, det_image, det_cat, score = random_arrays(100 + seed, n_images=45)
    levels = [("easy", "medium", "hard")[i % 3] for i in range(len(gt_counts))]
    gt, results = as_files(gt_counts, det_image, det_cat, score, levels)
    report = evaluate(results, gt, search="grid", compat="rpctool", compute_map=False)
    for row in report.rows:
        keep = np.array([row.level in ("averaged", lv) for lv in levels])
        local = np.cumsum(keep) - 1
        in_row = keep[det_image]
        assert (score[in_row] >= 0.99).any()  # else rpctool stops with an error on this row
        ref = rpctool_reference(gt_counts[keep], local[det_image[in_row]], det_cat[in_row], score[in_row])
        assert_row_is_the_reference(row, ref)


def constructed_case():
    """Two images found at 0.95 and one at 1.0 (right for t <= 0.95), three found at 0.25 with a false
    detection at 0.2 (right for 0.2 < t <= 0.25), three empty ones with a false detection at 0.5 (right for
    t > 0.5). Over every image the best cAcc (6/9) is first reached at the low end; over rpctool's table the
    images that are right only because their false detection is no longer counted have left it, and the
    three images found at 0.95 and 1.0 alone give 100% for 0.5 < t <= 0.95."""
    gt = np.array([[1, 0]] * 3 + [[1, 0]] * 3 + [[0, 0]] * 3)
    det_image = np.array([0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8])
    det_cat = np.array([0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 1])
    score = np.array([0.95, 0.95, 1.0, 0.25, 0.2, 0.25, 0.2, 0.25, 0.2, 0.5, 0.5, 0.5])
    return gt, det_image, det_cat, score


def test_the_default_keeps_every_image_and_differs_from_rpctool():
    arrays = constructed_case()
    gt, results = as_files(*arrays)
    honest = evaluate(results, gt, search="grid", compute_map=False).rows[0]
    compat = evaluate(results, gt, search="grid", compat="rpctool", compute_map=False).rows[0]
    ref = rpctool_reference(*arrays)
    assert_row_is_the_reference(compat, ref)
    assert compat.cacc == 1.0 and compat.n_images == 3 and 0.5 < compat.threshold <= 0.95
    assert honest.n_images == 9 and honest.cacc == pytest.approx(6 / 9) and 0.2 < honest.threshold <= 0.25
    # At rpctool's threshold, every image counted: the empty images are right, the three found at 0.25 wrong.
    fixed = evaluate(results, gt, protocol="fixed", threshold=compat.threshold, compute_map=False).rows[0]
    assert fixed.cacc == pytest.approx(6 / 9) and fixed.n_images == 9


def test_no_detection_at_a_grid_threshold_counts_as_zero():
    # rpctool stops with an error (no image in its table at t = 0.99); here that threshold's cAcc is 0.
    gt, results = as_files(np.array([[1], [0]]), np.array([0]), np.array([0]), np.array([0.5]))
    row = evaluate(results, gt, search="grid", compat="rpctool", compute_map=False).rows[0]
    assert row.cacc == 1.0 and row.n_images == 1 and row.threshold <= 0.5
    intervals = correct_intervals(np.array([0]), np.array([0]), np.array([0.5]), np.array([[1], [0]]))
    assert intervals.cacc(0.99, detected_only=True) == 0.0 and intervals.cacc(0.99) == 0.5


def test_compat_map_stays_over_every_image_and_reports_say_so(make_case):
    gt, results = make_case(5, n_images=30)
    honest = evaluate(results, gt, search="grid")
    compat = evaluate(results, gt, search="grid", compat="rpctool")
    assert [(r.map50, r.mmap) for r in compat.rows] == [(r.map50, r.mmap) for r in honest.rows]
    assert "rpctool compatibility" in compat.to_markdown() and compat.to_dict()["compat"] == "rpctool"
    assert "compat" not in honest.to_dict()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"compat": "rpctool"}, "needs protocol 'oracle' and search 'grid'"),
    ({"compat": "rpctool", "search": "grid", "protocol": "fixed", "threshold": 0.5}, "needs protocol 'oracle'"),
    ({"compat": "rpctool", "search": "grid", "intervals": 10}, "no bootstrap intervals"),
    ({"compat": "pycocotools", "search": "grid"}, "compat should be None or one of"),
])
def test_compat_refuses_what_it_cannot_reproduce(make_case, kwargs, message):
    gt, results = make_case(0, n_images=6)
    with pytest.raises(ValueError, match=message):
        evaluate(results, gt, **kwargs)


def test_cli_compat(case_files, tmp_path):
    files = case_files(1, 2)
    out = tmp_path / "rows.json"
    ok = CliRunner().invoke(main, ["evaluate", files["results"], files["gt"], "--search", "grid", "--compat",
                                   "rpctool", "--no-map", "--json", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "rpctool compatibility" in ok.output and json.loads(out.read_text())["compat"] == "rpctool"
    for args, message in [([], "add --search grid"),
                          (["--search", "grid", "--protocol", "fixed", "--threshold", "0.5"], "--protocol fixed"),
                          (["--search", "grid", "--intervals", "10"], "drop --intervals")]:
        bad = CliRunner().invoke(main, ["evaluate", files["results"], files["gt"], "--compat", "rpctool", *args])
        assert bad.exit_code == 2 and message in bad.output
        assert len(bad.output.strip().splitlines()) == 1 and bad.output.startswith("error: --compat rpctool")
