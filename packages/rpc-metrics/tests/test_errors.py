"""rpc_metrics.errors against a slow, obvious per-detection implementation, hand-made cases and the CLI."""

import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from rpc_metrics import evaluate
from rpc_metrics.cli import main
from rpc_metrics.errors import DEFAULT_SIZE_BINS, analyse_errors


def _iou(d, g):
    w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / (d[2] * d[3] + g[2] * g[3] - w * h)


def _greedy(dets, gts, iou, same_category):
    """COCO's rule, one detection at a time: by descending score (file order on ties), each takes the unmatched
    object of its image (and SKU) it overlaps most, at least ``iou`` (the last one on ties)."""
    taken, pairs = set(), {}
    for d in sorted(dets, key=lambda i: -dets[i]["score"]):
        best, best_iou = None, min(iou, 1 - 1e-10)
        for g, ann in gts.items():
            if g in taken or ann["image_id"] != dets[d]["image_id"]:
                continue
            if same_category and ann["category_id"] != dets[d]["category_id"]:
                continue
            v = _iou(dets[d]["bbox"], ann["bbox"])
            if v >= best_iou:
                best, best_iou = g, v
        if best is not None:
            taken.add(best)
            pairs[d] = best
    return pairs


def reference(gt, results, threshold, iou=0.5, image_ids=None):
    """found / wrong / missed / extra, confusion counts, size-bin counts and image classes, the slow way."""
    keep = set(image_ids) if image_ids is not None else {im["id"] for im in gt["images"]}
    gts = {i: a for i, a in enumerate(gt["annotations"]) if not a.get("iscrowd") and a["image_id"] in keep}
    dets = {i: r for i, r in enumerate(results) if r["score"] >= threshold and r["image_id"] in keep}
    first = _greedy(dets, gts, iou, True)
    left_d = {d: dets[d] for d in dets if d not in first}
    left_g = {g: gts[g] for g in gts if g not in set(first.values())}
    second = _greedy(left_d, left_g, iou, False)
    wrong = set(second.values())
    missed = [g for g in left_g if g not in wrong]
    extra = [d for d in left_d if d not in second]
    confusions = Counter((gts[g]["category_id"], dets[d]["category_id"]) for d, g in second.items())
    edges = [0.0, *DEFAULT_SIZE_BINS, np.inf]

    def bin_of(g):
        side = min(gts[g]["bbox"][2], gts[g]["bbox"][3])
        return next(b for b in range(len(edges) - 1) if edges[b] <= side < edges[b + 1])

    sizes = {"objects": Counter(bin_of(g) for g in gts), "found": Counter(bin_of(g) for g in first.values()),
             "wrong_sku": Counter(bin_of(g) for g in wrong), "missed": Counter(bin_of(g) for g in missed)}
    classes = Counter()
    for image in keep:
        truth = Counter(a["category_id"] for a in gts.values() if a["image_id"] == image)
        pred = Counter(r["category_id"] for r in dets.values() if r["image_id"] == image)
        under = any(pred[c] < n for c, n in truth.items())
        over = any(n > truth[c] for c, n in pred.items())
        classes["right" if not (under or over) else "both" if under and over else "under" if under else "over"] += 1
    per_sku = {"objects": Counter(a["category_id"] for a in gts.values()),
               "found": Counter(gts[g]["category_id"] for g in first.values()),
               "wrong_sku": Counter(gts[g]["category_id"] for g in wrong),
               "missed": Counter(gts[g]["category_id"] for g in missed),
               "extra": Counter(dets[d]["category_id"] for d in extra)}
    return {"found": len(first), "wrong_sku": len(second), "missed": len(missed), "extra": len(extra),
            "confusions": confusions, "sizes": sizes, "classes": classes, "per_sku": per_sku}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.71])
def test_breakdown_equals_the_slow_reference(make_case, seed, threshold):
    gt, results = make_case(seed, n_images=30)
    report = analyse_errors(results, gt, protocol="fixed", threshold=threshold, levels=["averaged"])
    row = report.row("averaged")
    ref = reference(gt, results, threshold)
    assert (row.found, row.wrong_sku, row.missed, row.extra) == (ref["found"], ref["wrong_sku"], ref["missed"],
                                                                 ref["extra"])
    assert Counter({(a, b): n for a, b, n in row.confusions}) == ref["confusions"]
    counts = [n for _, _, n in row.confusions]
    assert counts == sorted(counts, reverse=True)
    for name, tally in ref["sizes"].items():
        assert [b[name] for b in row.size_bins] == [tally[i] for i in range(len(row.size_bins))], name
    for name, tally in ref["per_sku"].items():
        assert {c["category_id"]: c[name] for c in row.categories if c[name]} == dict(tally), name
    assert [c["category_id"] for c in row.categories] == sorted(c["id"] for c in gt["categories"])
    classes = ref["classes"]
    assert (row.images_right, row.images_under, row.images_over, row.images_both) == (
        classes["right"], classes["under"], classes["over"], classes["both"])


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_rows_add_up_and_agree_with_evaluate(make_case, seed):
    gt, results = make_case(seed, n_images=45)
    report = analyse_errors(results, gt, protocol="oracle")
    scores = evaluate(results, gt, protocol="oracle", compute_map=False)
    assert [r.level for r in report.rows] == ["easy", "medium", "hard", "averaged"]
    for row, counted in zip(report.rows, scores.rows, strict=True):
        assert row.threshold == counted.threshold
        assert row.images_right == round(counted.cacc * row.n_images)
        assert row.objects == row.found + row.wrong_sku + row.missed
        assert row.detections == row.found + row.wrong_sku + row.extra
        assert row.n_images == row.images_right + row.images_under + row.images_over + row.images_both
        assert sum(b["objects"] for b in row.size_bins) == row.objects
        # Undoing a kind of error that the row does not have changes nothing.
        for kind in ("missed", "wrong_sku", "extra"):
            assert 0 <= row.right_if[kind] <= row.n_images
            if getattr(row, kind) == 0:
                assert row.right_if[kind] == row.images_right
    # At one threshold for every row, the levels add up to the averaged row.
    fixed = analyse_errors(results, gt, protocol="fixed", threshold=0.4)
    for name in ("found", "wrong_sku", "missed", "extra", "images_right", "images_both"):
        assert sum(getattr(r, name) for r in fixed.rows[:3]) == getattr(fixed.row("averaged"), name), name


def _case(annotations, detections):
    cats = [{"id": k, "name": f"sku{k}"} for k in (1, 2, 3)]
    images = [{"id": 1, "file_name": "1.jpg", "width": 200, "height": 200},
              {"id": 2, "file_name": "2.jpg", "width": 200, "height": 200}]
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for i, (im, c, b, crowd) in enumerate(annotations)]
    res = [{"image_id": im, "category_id": c, "bbox": b, "score": s} for im, c, b, s in detections]
    return {"images": images, "categories": cats, "annotations": anns}, res


def test_hand_made_images():
    box_a, box_b, box_c = [10, 10, 40, 40], [100, 10, 20, 30], [10, 100, 60, 60]
    gt, res = _case(
        [(1, 1, box_a, 0), (1, 2, box_b, 0), (1, 3, box_c, 0),  # image 1: a found, b named 1, c missed
         (2, 1, box_a, 0), (2, 2, box_b, 1)],                   # image 2: a found twice over, b a crowd region
        [(1, 1, box_a, 0.9), (1, 1, [101, 11, 20, 30], 0.8), (1, 2, [150, 150, 10, 10], 0.7),
         (1, 3, box_c, 0.1),  # below the threshold
         (2, 1, box_a, 0.95), (2, 1, [11, 10, 40, 40], 0.6), (2, 2, box_b, 0.9)])
    row = analyse_errors(res, gt, protocol="fixed", threshold=0.5).row("averaged")
    assert (row.objects, row.detections) == (4, 6)
    assert (row.found, row.wrong_sku, row.missed, row.extra) == (2, 1, 1, 3)
    assert row.confusions == [(2, 1, 1)]
    # Image 1: sku1 +1, sku3 -1 -> both; image 2: sku1 +1, sku2 +1 (the crowd region is not counted) -> over.
    assert (row.images_right, row.images_under, row.images_over, row.images_both) == (0, 0, 1, 1)
    # Undoing the extras mends image 2 only; undoing image 1's wrong SKU leaves its missed sku3 and extra sku2.
    assert row.right_if == {"missed": 0, "wrong_sku": 0, "extra": 1}
    sizes = {b["lo"]: b for b in row.size_bins if b["objects"]}
    assert sizes[16.0]["wrong_sku"] == 1 and sizes[32.0]["found"] == 2 and sizes[48.0]["missed"] == 1
    # At 0.05 the missed sku3 is found; image 1 still has a wrong SKU and an extra, so no single kind mends it.
    low = analyse_errors(res, gt, protocol="fixed", threshold=0.05).row("averaged")
    assert (low.found, low.missed) == (3, 0)
    assert low.right_if == {"missed": 0, "wrong_sku": 0, "extra": 1}


def test_a_wrong_sku_alone_is_mended_by_its_kind():
    gt, res = _case([(1, 1, [10, 10, 40, 40], 0), (2, 2, [10, 10, 40, 40], 0)],
                    [(1, 2, [12, 10, 40, 40], 0.9), (2, 2, [10, 10, 40, 40], 0.9), (2, 3, [100, 100, 30, 30], 0.2)])
    row = analyse_errors(res, gt, protocol="fixed", threshold=0.5).row("averaged")
    assert (row.images_right, row.wrong_sku, row.extra, row.missed) == (1, 1, 0, 0)
    assert row.right_if == {"missed": 1, "wrong_sku": 2, "extra": 1}
    assert "| sku1 | sku2 | 1 |" in analyse_errors(res, gt, protocol="fixed", threshold=0.5).to_markdown()
    text = analyse_errors(res, gt, protocol="fixed", threshold=0.99).to_markdown()
    assert "| sku1 | 1 | 1 | 100.00% | 0 | 0 |" in text and "| sku2 | 1 | 1 | 100.00% | 0 | 0 |" in text


def test_errors_that_cancel_out():
    # A missed sku1 and an extra sku1 elsewhere: counted right, and wrong once either is undone alone.
    gt, res = _case([(1, 1, [10, 10, 40, 40], 0)], [(1, 1, [120, 120, 40, 40], 0.9)])
    row = analyse_errors(res, gt, protocol="fixed", threshold=0.5).row("averaged")
    assert (row.images_right, row.missed, row.extra) == (2, 1, 1)
    assert row.right_if == {"missed": 1, "wrong_sku": 2, "extra": 1}


def test_iou_setting_and_empty_inputs():
    gt, res = _case([(1, 1, [10, 10, 40, 40], 0)], [(1, 1, [25, 10, 40, 40], 0.9)])  # IoU 25/55 = 0.45
    assert analyse_errors(res, gt, protocol="fixed", threshold=0.5).row("averaged").found == 0
    assert analyse_errors(res, gt, protocol="fixed", threshold=0.5, iou=0.4).row("averaged").found == 1
    empty = analyse_errors([], gt, protocol="fixed", threshold=0.5).row("averaged")
    assert (empty.missed, empty.extra, empty.images_under, empty.right_if["missed"]) == (1, 0, 1, 2)
    no_gt, res = _case([], [(1, 1, [25, 10, 40, 40], 0.9)])
    row = analyse_errors(res, no_gt, protocol="fixed", threshold=0.5).row("averaged")
    assert (row.objects, row.extra, row.images_over, row.right_if["extra"]) == (0, 1, 1, 2)


def test_transfer_uses_the_validation_threshold(make_case):
    gt, results = make_case(7, n_images=30)
    val_gt, val_results = make_case(8, n_images=30)
    report = analyse_errors(results, gt, protocol="transfer", val_results=val_results, val_gt=val_gt)
    scores = evaluate(results, gt, protocol="transfer", val_results=val_results, val_gt=val_gt, compute_map=False)
    assert report.validation_threshold == scores.validation_threshold
    assert {r.threshold for r in report.rows} == {scores.validation_threshold}


@pytest.mark.parametrize("kwargs, message", [
    ({"protocol": "fixed"}, "needs a threshold"),
    ({"protocol": "transfer"}, "needs val_results"),
    ({"protocol": "fixed", "threshold": 0.5, "iou": 0.0}, "iou"),
    ({"protocol": "fixed", "threshold": 0.5, "size_bins": [32, 16]}, "size_bins"),
    ({"protocol": "fixed", "threshold": 0.5, "levels": ["huge"]}, "unknown level"),
])
def test_bad_arguments(make_case, kwargs, message):
    gt, results = make_case(0, n_images=6)
    with pytest.raises(ValueError, match=message):
        analyse_errors(results, gt, **kwargs)


@pytest.fixture
def files(case_files):
    return case_files(3, 4)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_prints_the_tables_and_writes_json(files, tmp_path):
    out = tmp_path / "errors.json"
    result = run("errors", files["results"], files["gt"], "--protocol", "transfer", "--val-results",
                 files["val_results"], "--val-gt", files["val_gt"], "--size-bins", "10,20,40", "--json", out)
    assert result.exit_code == 0, result.output
    assert "| level | threshold | images | right | under-counted only |" in result.output
    assert "| shorter side (px) | objects | found | wrong SKU | missed | missed share |" in result.output
    rows = json.loads(out.read_text())
    assert rows["protocol"] == "transfer" and len(rows["rows"]) == 4
    assert [b["hi"] for b in rows["rows"][0]["size_bins"]][:3] == [10, 20, 40]


@pytest.mark.parametrize("args, message", [
    (["--protocol", "fixed"], "needs --threshold"),
    (["--protocol", "transfer"], "needs --val-results"),
    (["--threshold", "0.5"], "only used with --protocol fixed"),
    (["--protocol", "fixed", "--threshold", "0.5", "--size-bins", "20,10"], "should be increasing"),
    (["--protocol", "fixed", "--threshold", "0.5", "--size-bins", "a,b"], "comma-separated"),
])
def test_cli_usage_errors(files, args, message):
    result = run("errors", files["results"], files["gt"], *args)
    assert result.exit_code == 2
    assert message in result.output


def test_cli_bad_file_exits_2_naming_it(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1}]')
    result = run("errors", bad, files["gt"], "--protocol", "fixed", "--threshold", "0.5")
    assert result.exit_code == 2
    assert "bad.json" in result.output
