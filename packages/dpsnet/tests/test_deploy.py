"""Deployment: the bundle (weights_only, predict's settings), dpsnet.Counter's receipts against `dpsnet predict`,
`dpsnet export` and `dpsnet count` with their errors."""

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dpsnet
from dpsnet.cli import main
from dpsnet.config import make_config
from dpsnet.deploy import Counter, half_up, make_bundle, read_bundle
from dpsnet.training import train
from rpc_metrics.io import read_pool, read_results

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def checkpoint(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy_run")
    train(make_config("cpu-small", tiny_overrides(world, **{"model.box_score_thresh": 0.0,
                                                            "model.count_classes": "category"})), out, echo=False)
    return out / "last.pt"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _threshold(scores):
    """A threshold between two distinct scores near the 85th percentile, far from every score (file rounding)."""
    values = np.unique(np.round(np.asarray(scores), 5))
    k = int(len(values) * 0.85)
    gaps = [(values[i + 1] - values[i], i) for i in range(max(0, k - 5), min(len(values) - 1, k + 5))]
    _, i = max(gaps)
    return float((values[i] + values[i + 1]) / 2)


@pytest.fixture(scope="module")
def predicted(world, checkpoint, tmp_path_factory):
    """`dpsnet predict` in float32 over the pool, and the operating threshold chosen on its scores."""
    tmp = tmp_path_factory.mktemp("deploy_predict")
    res = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                 world / "images", "--out-results", tmp / "r.json", "--out-counts", tmp / "c.json",
                 "--device", "cpu", "--quiet", "--no-amp")
    assert res.exit_code == 0, res.output
    results = read_results(tmp / "r.json")
    return results, json.loads((tmp / "c.json").read_text()), _threshold([r["score"] for r in results])


@pytest.fixture(scope="module")
def bundle_path(checkpoint, predicted, tmp_path_factory):
    path = tmp_path_factory.mktemp("deploy_bundle") / "model.pt"
    res = invoke("export", "--format", "bundle", "--checkpoint", checkpoint, "--threshold", predicted[2],
                 "--protocol", "oracle", "--out", path)
    assert res.exit_code == 0, res.output
    return path


def test_bundle_holds_what_predict_used_and_no_training_state(bundle_path, checkpoint, predicted):
    bundle = torch.load(bundle_path, map_location="cpu", weights_only=True)
    assert bundle["format"] == "dpsnet-bundle" and bundle["threshold"] == pytest.approx(predicted[2])
    assert bundle["protocol"] == "oracle" and bundle["reclassifier"] is None and bundle["precision"] == "float32"
    assert not {"optimizer", "scheduler", "rng", "step"} & set(bundle)
    assert [c for c in bundle["categories"]["category_names"]] == ["red_box", "green_ellipse", "blue_box"]
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert bundle["model"].keys() == ckpt["model"].keys()
    assert all(torch.equal(bundle["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert bundle["postprocessing"]["test_flips"] == ckpt["model_kwargs"].get("test_flips", "")
    assert list(bundle["preprocessing"]["min_size"]) == [96]


def assert_same_boxes(theirs, ours, tol=1.0):
    """Two lists of (category id, xyxy box) hold the same detections, each box within ``tol`` px of its match."""
    assert len(theirs) == len(ours)
    left = list(ours)
    for label, box in theirs:
        match = [i for i, (lab, b) in enumerate(left) if lab == label and np.abs(np.subtract(b, box)).max() <= tol]
        assert match, f"no detection of {label} at {box} in {left}"
        left.pop(match[0])


def _by_image(results, threshold):
    out = {}
    for r in results:
        if r["score"] >= threshold:
            out.setdefault(r["image_id"], []).append(r)
    return out


def test_counter_receipts_equal_predict_at_the_operating_threshold(world, bundle_path, predicted):
    """Same counts per SKU, boxes within 1 px, the counting view's numbers as the counts file (float32)."""
    results, counts, threshold = predicted
    pool = read_pool(world / "pool.json")
    counter = dpsnet.Counter.load(bundle_path, "cpu", batch_size=3)
    images = [world / "images" / im["file_name"] for im in sorted(pool["images"], key=lambda im: im["id"])]
    receipts = counter.count_many(images)
    counted = _by_image(results, threshold)
    view = {e["image_id"]: e["counts"] for e in counts["images"]}
    assert sum(r.total for r in receipts) > 0
    for im, receipt in zip(sorted(pool["images"], key=lambda im: im["id"]), receipts, strict=True):
        expected = counted.get(im["id"], [])
        per_sku = {}
        for r in expected:
            per_sku[r["category_id"]] = per_sku.get(r["category_id"], 0) + 1
        assert {i["category_id"]: i["count"] for i in receipt.items} == per_sku
        theirs = [(r["category_id"], [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                                      r["bbox"][1] + r["bbox"][3]]) for r in expected]
        assert_same_boxes(theirs, list(zip(receipt.labels, receipt.boxes, strict=True)))
        for name, value in view[im["id"]].items():
            assert receipt.view_counts[name] == pytest.approx(value, abs=1e-3)
        detector = {str(k): v for k, v in per_sku.items()}
        assert receipt.consistent == all(detector.get(n, 0) == half_up(v) for n, v in receipt.view_counts.items())
    # one image alone, as an array, gives the batch's receipt
    single = counter(cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB))
    assert single.items == receipts[0].items and single.source == "<array>"


def test_receipt_consistency_rounds_half_up():
    from dpsnet.data import CategoryMap
    from dpsnet.deploy import make_receipt

    cats = CategoryMap([3, 5], "category", ["3", "5"], [0, 0, 1], ["a", "b"])
    det = {"boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4]]),
           "scores": torch.tensor([0.9, 0.8, 0.1]), "labels": torch.tensor([1, 1, 2]),
           "counts": torch.tensor([1.5, 0.49])}
    receipt = make_receipt(det, cats, 0.5, "x")
    assert receipt.items == [{"category_id": 3, "name": "a", "count": 2}] and receipt.consistent
    assert receipt.view_total == pytest.approx(1.99) and "consistent" in receipt.table()
    det["counts"] = torch.tensor([2.5, 0.0])
    assert not make_receipt(det, cats, 0.5, "x").consistent  # 2.5 rounds to 3


def test_count_command_tables_json_and_pictures(world, bundle_path, tmp_path):
    res = invoke("count", world / "images" / "img_000.png", world / "images" / "img_001.png", "--model",
                 bundle_path, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "img_000.png:" in res.output and "counting view" in res.output
    res = invoke("count", world / "images", "--model", bundle_path, "--device", "cpu", "--json",
                 tmp_path / "r.jsonl", "--draw", tmp_path / "pics")
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(lines) == 7 and {"items", "boxes", "scores", "labels", "view_total", "consistent"} <= set(lines[0])
    assert "count: 7/7 images" in res.output  # the progress line (stderr) on a folder
    assert len(list((tmp_path / "pics").glob("*.png"))) == 7


def test_count_command_errors_exit_2_naming_the_file(world, bundle_path, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    torch.save({"model": {}}, tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    cases = [((tmp_path / "missing.png", "--model", bundle_path), "missing.png"),
             ((tmp_path / "notes.png", "--model", bundle_path), "notes.png"),
             ((world / "images" / "img_000.png", "--model", tmp_path / "bad.pt"), "bad.pt"),
             ((world / "images" / "img_000.png", "--model", tmp_path / "junk.pt"), "junk.pt"),
             ((world / "images" / "img_000.png", "--model", tmp_path / "none.pt"), "none.pt")]
    for args, name in cases:
        res = invoke("count", *args, "--device", "cpu")
        assert res.exit_code == 2 and name in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


def test_export_errors_and_reclassifier(checkpoint, tmp_path):
    res = invoke("export", "--checkpoint", checkpoint, "--threshold", 1.5, "--out", tmp_path / "b.pt")
    assert res.exit_code == 2 and "--threshold" in res.output
    res = invoke("export", "--checkpoint", tmp_path / "none.pt", "--threshold", 0.5, "--out", tmp_path / "b.pt")
    assert res.exit_code == 2 and "none.pt" in res.output
    with pytest.raises(FileNotFoundError, match=r"w\.pt"):
        make_bundle(checkpoint, 0.5, reclassifier=tmp_path / "w.pt")
    with pytest.raises(ValueError, match="not a dpsnet bundle"):
        read_bundle(checkpoint)
    assert Counter is dpsnet.Counter


def test_bundle_with_reclassifier_and_options_gives_predicts_receipts(world, checkpoint, tmp_path):
    """predict's options and its re-scorer (embedded in the bundle, pair specialists included) give the same
    counted detections through the Counter as through `dpsnet predict`."""
    res = invoke("pretrain", "--instances", world / "instances.json", "--images", world / "images", "--out",
                 tmp_path / "crops.pt", "--size", 16, "--channels", "4,8,8,8", "--steps", 2, "--batch-size", 4,
                 "--specialist-steps", 1, "--specialist-pair", "3,9")
    assert res.exit_code == 0, res.output
    options = ["--reclassifier", tmp_path / "crops.pt", "--reclassifier-power", 0.7, "--agnostic-nms", 0.3,
               "--test-flips", "h"]
    res = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                 world / "images", "--out-results", tmp_path / "r.json", "--out-counts", tmp_path / "c.json",
                 "--device", "cpu", "--quiet", "--no-amp", *options)
    assert res.exit_code == 0, res.output
    results = read_results(tmp_path / "r.json")
    threshold = _threshold([r["score"] for r in results])
    res = invoke("export", "--checkpoint", checkpoint, "--threshold", threshold, "--out", tmp_path / "b.pt", *options)
    assert res.exit_code == 0, res.output
    bundle = read_bundle(tmp_path / "b.pt")
    assert bundle["reclassifier"]["power"] == 0.7 and bundle["reclassifier"]["state"]["specialists"]
    (tmp_path / "crops.pt").unlink()  # the bundle needs nothing else
    counter = Counter.load(tmp_path / "b.pt", "cpu")
    assert counter.rescorer is not None and counter.model.test_flips == ("h",)
    pool = sorted(read_pool(world / "pool.json")["images"], key=lambda im: im["id"])
    receipts = counter.count_many([world / "images" / im["file_name"] for im in pool])
    counted = _by_image(results, threshold)
    assert sum(r.total for r in receipts) > 0
    for im, receipt in zip(pool, receipts, strict=True):
        theirs = [(r["category_id"], [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                                      r["bbox"][1] + r["bbox"][3]]) for r in counted.get(im["id"], [])]
        assert_same_boxes(theirs, list(zip(receipt.labels, receipt.boxes, strict=True)))
