"""Selection thresholds calibrated on the val split: against a slow matcher written out, ties, edge cases, and
in the loop (the threshold comes from the teacher's val predictions; the pool's labels still play no part)."""

import json

import pytest

from kd_loop import ConfigError, load_config, run_loop
from kd_loop.calibration import precision_threshold
from rpc_metrics.io import read_results, write_json
from rpc_metrics.synthetic import make_case


def iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax2, bx2) - max(a[0], b[0])) * max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def slow_precision_threshold(results, gt, target):
    """For every candidate threshold (each distinct score, high to low), match the kept detections greedily
    (by descending score, each to the unmatched true box of its image and category with the highest IoU >= 0.5)
    and compute precision; return the lowest threshold reaching ``target``."""
    truth = [a for a in gt["annotations"] if not a.get("iscrowd", 0)]
    best = None
    for t in sorted({r["score"] for r in results}, reverse=True):
        kept = sorted((r for r in results if r["score"] >= t), key=lambda r: -r["score"])
        used, right = set(), 0
        for r in kept:
            options = [(iou(r["bbox"], a["bbox"]), k) for k, a in enumerate(truth)
                       if k not in used and a["image_id"] == r["image_id"] and a["category_id"] == r["category_id"]]
            options = [o for o in options if o[0] >= 0.5]
            if options:
                used.add(max(options)[1])
                right += 1
        if right / len(kept) >= target:
            best = {"threshold": t, "precision": right / len(kept), "recall": right / len(truth), "kept": len(kept)}
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.97])
def test_matches_the_slow_matcher(seed, target):
    gt, results = make_case(12, 10, seed=seed, image_size=300, miss_rate=0.1, confusion_rate=0.15,
                            false_positives=2.0)
    got = precision_threshold(results, gt, target)
    want = slow_precision_threshold(results, gt, target)
    if want is None:
        assert got["kept"] == 0 and got["threshold"] > max(r["score"] for r in results)
    else:
        assert got["threshold"] == want["threshold"] and got["kept"] == want["kept"]
        assert got["precision"] == pytest.approx(want["precision"]) and got["recall"] == pytest.approx(want["recall"])


def _gt(boxes):
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": b, "iscrowd": 0}
                            for k, (c, b) in enumerate(boxes)]}


def test_hand_worked_case_with_a_tie():
    gt = _gt([(1, [0, 0, 10, 10]), (1, [20, 20, 10, 10]), (2, [40, 40, 10, 10])])
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},     # right
        {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.7},   # wrong class
        {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.7},   # right, tied with the wrong one
        {"image_id": 1, "category_id": 2, "bbox": [40, 40, 10, 10], "score": 0.5},   # right
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.4},     # duplicate: wrong
    ]
    # Precision at 0.9: 1/1; at 0.7 (both tied ones kept): 2/3; at 0.5: 3/4; at 0.4: 3/5.
    assert precision_threshold(results, gt, 1.0)["threshold"] == 0.9
    assert precision_threshold(results, gt, 0.75) == {"threshold": 0.5, "precision": 0.75, "recall": 1.0, "kept": 4}
    assert precision_threshold(results, gt, 0.6)["threshold"] == 0.4


def test_nothing_reaches_the_target_or_nothing_to_keep():
    gt = _gt([(1, [0, 0, 10, 10])])
    wrong = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.8}]
    out = precision_threshold(wrong, gt, 0.5)
    assert out["kept"] == 0 and out["precision"] is None and out["threshold"] > 0.8
    assert precision_threshold([], gt, 0.5)["kept"] == 0
    elsewhere = [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8}]  # not a val image
    assert precision_threshold(elsewhere, gt, 0.5)["kept"] == 0
    with pytest.raises(ValueError, match="target precision"):
        precision_threshold(wrong, gt, 0.0)


def quiet(message):
    pass


VAL = ['val.instances="val_gt.json"', 'val.images="val_images"', "selection.target_precision=0.9"]


def test_the_loop_takes_the_threshold_from_the_teachers_val_predictions(toy_world, tmp_path):
    run_loop(load_config(toy_world, [*VAL, "rounds=1"]), workdir=tmp_path / "run", log=quiet)
    stats = json.loads((tmp_path / "run" / "round_001" / "selection.json").read_text())
    val_gt = json.loads((toy_world.parent / "val_gt.json").read_text())
    want = precision_threshold(read_results(tmp_path / "run" / "round_000" / "val_predictions.json"), val_gt, 0.9)
    assert stats["calibration"] == {"target_precision": 0.9, **want}
    assert stats["threshold"] == want["threshold"]


def test_calibrated_selection_never_sees_the_pools_labels(toy_world, tmp_path):
    gt = json.loads((toy_world.parent / "pool_gt.json").read_text())
    wrong = {**gt, "annotations": [{**a, "category_id": 1 + a["category_id"] % 8} for a in gt["annotations"]]}
    write_json(wrong, toy_world.parent / "wrong_gt.json")
    selections = []
    for name, extra in (("true", []), ("wrong", ['pool.gt="wrong_gt.json"'])):
        run_loop(load_config(toy_world, [*VAL, *extra]), workdir=tmp_path / name, log=quiet)
        selections.append([(tmp_path / name / f"round_{r:03d}" / f).read_text().replace(str(tmp_path / name), "")
                           for r in (1, 2) for f in ("selection.json", "pseudo_labels.json")])
    assert selections[0] == selections[1]


def test_target_precision_needs_a_val_split(toy_world):
    with pytest.raises(ConfigError, match=r"set val\.instances"):
        load_config(toy_world, ["selection.target_precision=0.9"])
    with pytest.raises(ConfigError, match="target_precision should be a number"):
        load_config(toy_world, [*VAL[:2], "selection.target_precision=1.5"])
