"""predict (files validated by rpc-metrics), evaluate, visualize and the CLI's errors."""

import json
import re

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dpsnet.cli import main
from dpsnet.config import DEFAULTS, make_config
from dpsnet.training import train
from rpc_metrics.counts import count_accuracy, count_error
from rpc_metrics.io import read_counts, read_pool, read_results

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def checkpoint(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # One density map per SKU (the preset counts objects): the per-SKU counts file is the richer one to check.
    train(make_config("cpu-small", tiny_overrides(world, **{"model.box_score_thresh": 0.0,
                                                            "model.count_classes": "category"})), out, echo=False)
    return out / "last.pt"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_predict_writes_valid_results_and_counts(world, checkpoint, tmp_path):
    res = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                 world / "images", "--out-results", tmp_path / "r.json", "--out-counts", tmp_path / "c.json",
                 "--batch-size", 3, "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    pool = read_pool(world / "pool.json")
    results = read_results(tmp_path / "r.json", gt=pool)
    counts = read_counts(tmp_path / "c.json", pool=pool)  # every pool image listed, blank one included
    assert counts["count_classes"] == "category" and len(counts["images"]) == 7
    assert all(set(e["counts"]) <= {"3", "5", "9"} for e in counts["images"])
    assert len(results) > 0 and {r["category_id"] for r in results} <= {3, 5, 9}


@pytest.mark.parametrize("native", [True, False])
def test_predict_amp_option(world, checkpoint, tmp_path, monkeypatch, native):
    """--amp (default) predicts under bfloat16 autocast where the CPU has it natively (forced here either way),
    with counts from the float32 counting view; without native bfloat16, --amp is exactly --no-amp."""
    monkeypatch.setattr("dpsnet.inference.prediction.native_bf16", lambda device: native)
    files = {}
    for flag in ("--amp", "--no-amp"):
        res = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                     world / "images", "--out-results", tmp_path / f"r{flag}.json", "--out-counts",
                     tmp_path / f"c{flag}.json", "--device", "cpu", "--quiet", flag)
        assert res.exit_code == 0, res.output
        files[flag] = (read_results(tmp_path / f"r{flag}.json"), read_counts(tmp_path / f"c{flag}.json"))
    (amp_results, amp_counts), (plain_results, plain_counts) = files["--amp"], files["--no-amp"]
    if not native:
        assert amp_results == plain_results and amp_counts == plain_counts
        return
    assert amp_counts["images"] != [] and len(amp_counts["images"]) == len(plain_counts["images"])
    for a, b in zip(amp_counts["images"], plain_counts["images"], strict=True):
        for name in set(a["counts"]) | set(b["counts"]):
            assert a["counts"].get(name, 0.0) == pytest.approx(b["counts"].get(name, 0.0), abs=0.05)
    # Detections are not compared one by one: the tiny model's scores nearly tie, so bfloat16 rounding changes
    # which of its boxes NMS keeps (test_model.py compares a model's outputs and losses under autocast).
    assert amp_results and {r["image_id"] for r in amp_results} == {r["image_id"] for r in plain_results}


def test_predict_agnostic_nms_option(world, checkpoint, tmp_path):
    """--agnostic-nms overrides the checkpoint's model.box_agnostic_nms_thresh (0: off). With it, the detections
    that keep their score overlap no other kept one above the IoU, whatever their SKUs; the suppressed ones stay
    with 1% of their score (the preset's model.box_agnostic_nms_decay); off, the same checkpoint had such pairs."""
    from torchvision.ops import box_iou

    def by_image(path):
        out = {}
        for r in read_results(path):
            out.setdefault(r["image_id"], []).append(r)
        return out

    def max_iou(results):
        b = torch.tensor([r["bbox"] for r in results]).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        return float(box_iou(b, b).fill_diagonal_(0).max()) if len(b) > 1 else 0.0

    for name, iou in (("plain", 0), ("agnostic", 0.3)):
        res = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                     world / "images", "--out-results", tmp_path / f"{name}.json", "--out-counts",
                     tmp_path / f"{name}_c.json", "--device", "cpu", "--quiet", "--agnostic-nms", iou,
                     "--test-flips", "")  # the preset's fused views would move the boxes
        assert res.exit_code == 0, res.output
    plain, agnostic = by_image(tmp_path / "plain.json"), by_image(tmp_path / "agnostic.json")
    assert max(max_iou(rs) for rs in plain.values()) > 0.3
    decayed = 0
    for image_id, rs in agnostic.items():
        assert len(rs) == len(plain[image_id])
        scores = {(r["category_id"], tuple(r["bbox"])): r["score"] for r in plain[image_id]}
        kept = [r for r in rs if abs(r["score"] - scores[r["category_id"], tuple(r["bbox"])]) <= 1e-5]
        others = [r for r in rs if r not in kept]
        assert all(abs(r["score"] - 0.01 * scores[r["category_id"], tuple(r["bbox"])]) <= 1e-5 for r in others)
        assert max_iou(kept) <= 0.3 + 1e-4  # boxes are rounded to 0.01 px in the file
        decayed += len(others)
    assert decayed > 0
    bad = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                 world / "images", "--out-results", tmp_path / "x.json", "--out-counts", tmp_path / "y.json",
                 "--agnostic-nms", 2)
    assert bad.exit_code == 2 and "agnostic-nms" in bad.output


def test_predict_test_flips_option(world, checkpoint, tmp_path):
    """--test-flips fuses the flipped views: the files stay valid for the pool, the detections change, the counts
    are the views' mean (for the 180-degree view: the mean of the plain and the turned images' counts); a bad
    view name exits 2 naming the option's key."""
    def run(name, *extra, images="images"):
        res = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                     world / images, "--out-results", tmp_path / f"{name}.json", "--out-counts",
                     tmp_path / f"{name}_c.json", "--device", "cpu", "--quiet", *extra)
        assert res.exit_code == 0, res.output
        pool = read_pool(world / "pool.json")
        return read_results(tmp_path / f"{name}.json", gt=pool), read_counts(tmp_path / f"{name}_c.json", pool=pool)

    plain, plain_counts = run("plain", "--test-flips", "")
    fused, fused_counts = run("fused", "--test-flips", "hv", "--test-flip-iou", "0.5")
    assert len(fused) > 0 and sorted(map(str, fused)) != sorted(map(str, plain))
    turned_dir = world / "turned"
    turned_dir.mkdir(exist_ok=True)
    for path in (world / "images").iterdir():
        cv2.imwrite(str(turned_dir / path.name), cv2.rotate(cv2.imread(str(path)), cv2.ROTATE_180))
    _, turned_counts = run("turned", "--test-flips", "", images="turned")
    for entries in zip(plain_counts["images"], turned_counts["images"], fused_counts["images"], strict=True):
        p, t, f = (e["counts"] for e in entries)
        for key in set(p) | set(t):
            want = (p.get(key, 0.0) + t.get(key, 0.0)) / 2
            assert abs(f.get(key, 0.0) - want) <= 2e-3, (key, p, t, f)
    bad = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                 world / "images", "--out-results", tmp_path / "x.json", "--out-counts", tmp_path / "y.json",
                 "--test-flips", "diagonal")
    assert bad.exit_code == 2 and "test_flips" in bad.output


def test_evaluate_prints_rpc_table_and_count_accuracy(world, checkpoint, tmp_path):
    assert invoke("predict", "--checkpoint", checkpoint, "--instances", world / "instances.json", "--images",
                  world / "images", "--out-results", tmp_path / "r.json", "--out-counts", tmp_path / "c.json",
                  "--device", "cpu", "--quiet").exit_code == 0
    res = invoke("evaluate", "--results", tmp_path / "r.json", "--gt", world / "instances.json", "--counts",
                 tmp_path / "c.json", "--json-out", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert "cAcc" in res.output and "averaged" in res.output and "counting view" in res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["count_acc"] <= 1.0 and metrics["count_mae"] >= abs(metrics["count_bias"])
    assert "mean absolute error" in res.output
    res = invoke("evaluate", "--results", tmp_path / "r.json", "--gt", world / "instances.json", "--protocol",
                 "transfer", "--val-results", tmp_path / "r.json", "--val-gt", world / "instances.json")
    assert res.exit_code == 0 and "transfer" in res.output.lower()


def test_count_accuracy_against_slow_count(world):
    gt = json.loads((world / "instances.json").read_text())
    exact = {"count_classes": "category", "images": []}
    for im in gt["images"]:
        counts = {}
        for a in gt["annotations"]:
            if a["image_id"] == im["id"] and not a["iscrowd"]:
                counts[str(a["category_id"])] = counts.get(str(a["category_id"]), 0) + 1.2 - 0.2 - 0.1
        exact["images"].append({"image_id": im["id"], "counts": counts})
    assert count_accuracy(exact, gt) == 1.0
    assert count_accuracy(exact, gt, total=True) == 1.0
    exact["images"][0]["counts"]["3"] = exact["images"][0]["counts"].get("3", 0) + 1
    assert count_accuracy(exact, gt) == pytest.approx(5 / 6)
    assert count_accuracy(exact, gt, total=True) == pytest.approx(5 / 6)
    first = exact["images"][1]["counts"]
    key = next(iter(first))
    first["other"] = first.pop(key)  # right total, wrong class
    assert count_accuracy(exact, gt) == pytest.approx(4 / 6)
    assert count_accuracy(exact, gt, total=True) == pytest.approx(5 / 6)
    objects = {"count_classes": "object", "images": [
        {"image_id": im["id"], "counts": {"object": float(sum(a["image_id"] == im["id"] and not a["iscrowd"]
                                                               for a in gt["annotations"]))}} for im in gt["images"]]}
    assert count_accuracy(objects, gt) == 1.0
    # Rounded half up, like kd-loop's agreement check: n - 0.5 counts as n, n + 0.5 as n + 1.
    for entry in objects["images"]:
        entry["counts"]["object"] -= 0.5
    assert count_accuracy(objects, gt) == 1.0 and count_accuracy(objects, gt, total=True) == 1.0
    for entry in objects["images"]:
        entry["counts"]["object"] += 1.0
    assert count_accuracy(objects, gt) == 0.0


def test_visualize_writes_pngs(world, checkpoint, tmp_path):
    res = invoke("visualize", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                 world / "images", "--out", tmp_path / "vis", "--limit", 2, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2


def test_missing_files_are_named(world, checkpoint, tmp_path):
    res = invoke("predict", "--checkpoint", tmp_path / "missing.pt", "--instances", world / "pool.json",
                 "--images", world / "images", "--out-results", tmp_path / "r.json", "--out-counts", tmp_path / "c.json")
    assert res.exit_code == 2 and "missing.pt" in res.output
    res = invoke("predict", "--checkpoint", checkpoint, "--instances", tmp_path / "nope.json",
                 "--images", world / "images", "--out-results", tmp_path / "r.json", "--out-counts", tmp_path / "c.json")
    assert res.exit_code == 2 and "nope.json" in res.output
    res = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json",
                 "--images", tmp_path / "noimages", "--out-results", tmp_path / "r.json", "--out-counts", tmp_path / "c.json")
    assert res.exit_code == 2 and "noimages" in res.output
    res = invoke("evaluate", "--results", tmp_path / "absent.json", "--gt", world / "instances.json")
    assert res.exit_code == 2 and "absent.json" in res.output
    res = invoke("train", "--out", tmp_path / "run", "data.train_instances=" + str(tmp_path / "gone.json"),
                 "data.train_images=" + str(world / "images"))
    assert res.exit_code == 2 and "gone.json" in res.output
    res = invoke("train", "--config", tmp_path / "cfg.toml", "--out", tmp_path / "run")
    assert res.exit_code == 2 and "cfg.toml" in res.output
    assert not (tmp_path / "r.json").exists()


def test_bad_config_keys_list_the_valid_ones(world, tmp_path):
    res = invoke("train", "--out", tmp_path / "run", "train.learning_rate=0.1")
    assert res.exit_code == 2
    assert "train.learning_rate" in res.output and "train.lr" in res.output and "model.backbone" in res.output
    (tmp_path / "bad.toml").write_text("[train]\nlrr = 1\n")
    res = invoke("train", "--config", tmp_path / "bad.toml", "--out", tmp_path / "run")
    assert res.exit_code == 2 and "train.lrr" in res.output and "train.lr," in res.output
    res = invoke("train", "--out", tmp_path / "run", "train.max_steps=many")
    assert res.exit_code == 2 and "train.max_steps" in res.output
    res = invoke("train", "--out", tmp_path / "run", "model.backbone=vgg")
    assert res.exit_code == 2 and "resnet50" in res.output
    res = invoke("train", "--out", tmp_path / "run", "train.trainable=heads")
    assert res.exit_code == 2 and "train.trainable" in res.output and "'counting'" in res.output


def test_config_command_documents_every_key():
    res = invoke("config", "--config", "rpc-paper", "train.lr=0.01")
    assert res.exit_code == 0
    for key in DEFAULTS:
        assert f"{key.split('.', 1)[1]} = " in res.output
    assert res.output.count("\n# ") + res.output.startswith("# ") >= len(DEFAULTS)
    assert 'backbone = "resnet101"' in res.output and "lr = 0.01" in res.output


def test_presets_and_overrides():
    paper = make_config("rpc-paper")
    assert paper["model.backbone"] == "resnet101" and paper["model.min_size"] == [800]
    small = make_config("cpu-small", ["model.min_size=[224, 256]", "data.train_ratios=1,2", "train.amp=false"])
    assert small["model.min_size"] == [224, 256] and small["data.train_ratios"] == [1.0, 2.0]
    assert small["train.amp"] is False


def test_train_cli_runs_and_resumes(world, tmp_path):
    args = ["train", "--out", tmp_path / "run"] + [f"{k}={json.dumps(v)}" for k, v in tiny_overrides(world).items()]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "config.toml").is_file() and (tmp_path / "run" / "last.pt").is_file()
    res = invoke("train", "--out", tmp_path / "run", "--resume", "train.max_steps=3")
    assert res.exit_code == 0, res.output
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_train_refuses_a_folder_holding_another_run(world, tmp_path):
    """Without --resume, a folder with a run's files is refused before anything is written or loaded."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[train]\nmax_steps = 7\n")
    (run / "log.txt").write_text("the other run\n")
    before = _snapshot(run)
    args = [f"{k}={json.dumps(v)}" for k, v in tiny_overrides(world).items()]
    res = invoke("train", "--out", run, *args)
    assert res.exit_code == 2
    assert res.output.strip() == f"error: {run} holds a run (config.toml); pass --resume to continue it or choose a new --out"
    assert _snapshot(run) == before
    (run / "config.toml").unlink()  # a run's logs alone say so too
    res = invoke("train", "--out", run, *args)
    assert res.exit_code == 2 and "holds a run (log.txt)" in res.output and _snapshot(run) == {"log.txt": before["log.txt"]}


def test_a_failed_train_writes_nothing(world, tmp_path):
    overrides = {**tiny_overrides(world), "data.train_images": [str(tmp_path / "no-images")]}
    res = invoke("train", "--out", tmp_path / "run", *[f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    assert res.exit_code == 2 and "no-images" in res.output
    assert not (tmp_path / "run").exists()
    res = invoke("train", "--out", tmp_path / "run", "data.train_instances=" + str(tmp_path / "gone.json"),
                 "data.train_images=" + str(world / "images"))
    assert res.exit_code == 2 and "gone.json" in res.output and not (tmp_path / "run").exists()


def test_progress_in_a_log_is_a_line_per_quarter(capsys):
    from dpsnet.progress import Progress

    progress = Progress("predict")
    for done in (4, 8, 12, 16, 18):
        progress(done, 18)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "predict: 8/18 images", "predict: 12/18 images", "predict: 16/18 images", "predict: 18/18 images"]
    assert all(re.fullmatch(r"predict: \d+/18 images, [\d.]+ images/s, eta (\d+:\d\d:\d\d|\?)", line)
               for line in lines), lines
    assert lines[-1].endswith("eta 0:00:00")


def test_predict_prints_its_progress_line(world, checkpoint, tmp_path):
    res = invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                 world / "images", "--out-results", tmp_path / "r.json", "--out-counts", tmp_path / "c.json",
                 "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "predict: 7/7 images" in res.output and "images/s, eta 0:00:00" in res.output


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_error_against_a_slow_loop(world, seed):
    gt = json.loads((world / "instances.json").read_text())
    gt["annotations"][seed]["iscrowd"] = 1  # an ignore region is not an object to count
    rng = np.random.default_rng(seed)
    counts = {"count_classes": "category", "images": []}
    for im in gt["images"][1:]:  # the first image is missing from the file: it predicts 0
        counts["images"].append({"image_id": im["id"], "counts": {str(k): float(rng.uniform(0, 3)) for k in (3, 5)}})
    diffs = []
    for im in gt["images"]:
        true = sum(1 for a in gt["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"])
        entry = next((e for e in counts["images"] if e["image_id"] == im["id"]), None)
        predicted = sum(entry["counts"].values()) if entry else 0.0
        diffs.append(predicted - true)
    error = count_error(counts, gt)
    assert error["mae"] == pytest.approx(sum(abs(d) for d in diffs) / len(diffs))
    assert error["bias"] == pytest.approx(sum(diffs) / len(diffs))
    assert count_error(counts, {**gt, "images": [], "annotations": []}) == {"mae": 0.0, "bias": 0.0}
