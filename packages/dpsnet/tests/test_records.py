"""A training run's records: the progress line, results.csv (columns that appear later) and the curves PNG."""

import csv

import cv2

from dpsnet.progress import format_seconds, progress_text
from dpsnet.training.curves import HEIGHT
from dpsnet.training.records import RunLog, step_line


def _record(step, **losses):
    return {"type": "train", "step": step, "max_steps": 10, "epoch": 0, "lr": 0.01, "loss": sum(losses.values()),
            **losses, "images_per_s": 8.0, "eta_s": 65.0, "elapsed_s": 1.0}


def test_the_progress_line():
    assert format_seconds(3725) == "1:02:05" and format_seconds(-3) == "0:00:00"
    assert progress_text("predict", "8/18 images", 3.14, "images", 3.2) == \
        "predict: 8/18 images, 3.1 images/s, eta 0:00:03"
    assert progress_text("x", "1/2 images", 0.0, "images", float("nan")).endswith("eta ?")
    line = step_line(_record(3, loss_a=0.5, loss_b=0.25), "train", "img")
    assert line == "train: step 3/10, lr 0.01000, loss 0.7500 (a 0.5000, b 0.2500), epoch 0, 8.0 img/s, eta 0:01:05"


def test_results_csv_gains_columns_and_the_curves_are_drawn(tmp_path):
    log = RunLog.in_folder(tmp_path, echo=False)
    log.step(_record(1, loss_a=1.0), "train", "img")
    log.step(_record(2, loss_a=0.8, loss_distill=0.3), "train", "img")  # a term that appears later (a resume)
    log.step(_record(3, loss_a=0.6, loss_distill=0.2), "train", "img")
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and rows[0]["loss_distill"] == ""
    assert rows[2]["loss_distill"] == "0.2" and list(rows[0])[:3] == ["step", "epoch", "lr"]
    log.draw()
    assert cv2.imread(str(tmp_path / "results.png")).shape[0] == HEIGHT  # losses only
    log.write({"type": "eval", "step": 3, "map50": 0.5, "cacc": 0.25}, "eval step 3")
    log.draw()
    assert cv2.imread(str(tmp_path / "results.png")).shape[0] == 2 * HEIGHT  # and the validation metrics
    assert "train: step 3/10" in (tmp_path / "log.txt").read_text()
    silent = RunLog.in_folder(tmp_path / "rank1", enabled=False)  # ranks > 0 write nothing
    silent.step(_record(1, loss_a=1.0), "train", "img")
    silent.draw()
    assert not (tmp_path / "rank1").exists()
