import csv
import json

import pytest
from click.testing import CliRunner

from rpc_metrics.cli import main
from rpc_metrics.io import write_json


@pytest.fixture
def files(case_files):
    return case_files(1, 2)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_evaluate_prints_the_table_and_writes_json_and_csv(files, tmp_path):
    out_json, out_csv = tmp_path / "rows.json", tmp_path / "cats.csv"
    result = run("evaluate", files["results"], files["gt"], "--json", out_json, "--per-category", out_csv,
                 "--method", "ours")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("protocol: oracle")
    assert "| level | method | cAcc | mCIoU | ACD | mCCD | mAP50 | mmAP | threshold |" in lines
    assert sum(line.startswith(("| easy | ours", "| medium | ours", "| hard | ours", "| averaged | ours"))
               for line in lines) == 4
    rows = json.loads(out_json.read_text())
    assert rows["protocol"] == "oracle" and len(rows["rows"]) == 4
    with open(out_csv) as f:
        records = list(csv.DictReader(f))
    assert len(records) == 4 * 6 and {"level", "category_id", "gt_count", "ap50"} <= set(records[0])


def test_protocols_and_options(files):
    fixed = run("evaluate", files["results"], files["gt"], "--protocol", "fixed", "--threshold", "0.5", "--no-map",
                "--levels", "easy,averaged")
    assert fixed.exit_code == 0, fixed.output
    assert "fixed (threshold 0.5" in fixed.output and "| medium" not in fixed.output
    assert "| - | - | 0.5 |" in fixed.output  # no mAP columns
    transfer = run("evaluate", files["results"], files["gt"], "--protocol", "transfer",
                   "--val-results", files["val_results"], "--val-gt", files["val_gt"], "--search", "grid")
    assert transfer.exit_code == 0 and "transfer (threshold" in transfer.output


@pytest.mark.parametrize(("args", "message"), [
    (["--protocol", "fixed"], "needs --threshold"),
    (["--protocol", "transfer"], "needs --val-results"),
    (["--threshold", "0.3"], "only used with --protocol fixed"),
    (["--levels", "expert"], "not a level"),
    (["--search", "random"], "Invalid value"),
])
def test_usage_errors_exit_2(files, args, message):
    result = run("evaluate", files["results"], files["gt"], *args)
    assert result.exit_code == 2 and message in result.output


def test_input_errors_exit_2_and_name_the_file(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    result = run("evaluate", bad, files["gt"])
    assert result.exit_code == 2 and f"error: {bad}: malformed JSON" in result.output
    wrong = tmp_path / "wrong.json"
    write_json([{"image_id": 123456, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.4}], wrong)
    result = run("evaluate", wrong, files["gt"])
    assert result.exit_code == 2 and "[0]: image_id 123456 is not in the ground truth" in result.output
    nan = tmp_path / "nan.json"
    nan.write_text('[{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]')
    result = run("evaluate", nan, files["gt"])
    assert result.exit_code == 2 and "non-finite" in result.output
    no_level = tmp_path / "nolevel.json"
    gt = json.loads(open(files["gt"]).read())
    del gt["images"][3]["level"]
    write_json(gt, no_level)
    result = run("evaluate", files["results"], no_level, "--levels", "easy")
    assert result.exit_code == 2 and "missing 'level'" in result.output


def test_empty_results_are_valid(files, tmp_path):
    empty = tmp_path / "empty.json"
    write_json([], empty)
    result = run("evaluate", empty, files["gt"])
    assert result.exit_code == 0 and "| averaged | default | " in result.output


def test_validate(files, tmp_path):
    counts = tmp_path / "counts.json"
    write_json({"count_classes": "category", "images": [{"image_id": 7, "counts": {"1": 1.5}}]}, counts)
    result = run("validate", files["gt"], files["results"], counts)
    assert result.exit_code == 0, result.output
    assert "instances: 24 images" in result.output and "results:" in result.output and "counts (category)" in result.output
    bad = tmp_path / "bad.json"
    write_json({"images": [{"id": 1}], "annotations": [], "categories": []}, bad)
    result = run("validate", files["gt"], bad)
    assert result.exit_code == 2 and "images[0]: missing required field 'file_name'" in result.output
    assert result.output.startswith("ok: ")  # the good file is still reported
    result = run("validate", counts, "--gt", files["gt"])
    assert result.exit_code == 2 and "pool images are not listed" in result.output


def test_evaluate_with_intervals_prints_and_writes_them(files, tmp_path):
    out_json = tmp_path / "rows.json"
    result = run("evaluate", files["results"], files["gt"], "--intervals", 50, "--interval-seed", 3,
                 "--confidence", 0.9, "--levels", "averaged", "--json", out_json)
    assert result.exit_code == 0, result.output
    assert "intervals: 90% percentile bootstrap over each row's images (50 resamples, seed 3)" in result.output
    row = json.loads(out_json.read_text())["rows"][0]
    lo, hi = row["intervals"]["cacc"]
    assert f"{100 * row['cacc']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]" in result.output
    assert set(row["intervals"]) == {"cacc", "mciou", "acd", "mccd", "map50", "mmap"}


@pytest.mark.parametrize(("args", "message"), [
    (["--intervals", "-1"], "--intervals"),
    (["--intervals", "10", "--confidence", "1.5"], "0 < x < 1"),
    (["--intervals", "10", "--confidence", "nan"], "0 < x < 1"),
    (["--protocol", "fixed", "--threshold", "nan"], "not a finite number"),
    (["--intervals", "10", "--interval-seed", "-1"], "--interval-seed"),
])
def test_evaluate_bad_bootstrap_options_exit_2(files, tmp_path, args, message):
    out_json = tmp_path / "rows.json"
    result = run("evaluate", files["results"], files["gt"], *args, "--json", out_json)
    assert result.exit_code == 2 and message in result.output
    assert not out_json.exists()


def test_compare_prints_the_table_and_writes_json(files, tmp_path):
    out_json = tmp_path / "cmp.json"
    result = run("compare", files["results"], files["results"], files["gt"], "--val-results-a", files["val_results"],
                 "--val-results-b", files["val_results"], "--val-gt", files["val_gt"], "--n-boot", 40, "--seed", 2,
                 "--levels", "easy,averaged", "--json", out_json)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"A: {files['results']}" and lines[2].startswith("protocol: transfer")
    assert "| level | metric | A | B | B - A | 95% interval |" in lines
    assert any(line.startswith("| averaged | cAcc |") and line.endswith("| +0.00 | [+0.00, +0.00] |") for line in lines)
    assert sum(line.startswith("| easy |") for line in lines) == 6 + 1  # six metrics, one discordance row
    report = json.loads(out_json.read_text())
    assert report["n_boot"] == 40 and report["seed"] == 2 and [r["level"] for r in report["rows"]] == ["easy", "averaged"]
    assert report["rows"][1]["metrics"]["map50"]["interval"] == [0.0, 0.0]


def test_compare_refuses_results_of_other_images(files, tmp_path):
    other, out_json = tmp_path / "other.json", tmp_path / "cmp.json"
    write_json([{"image_id": 123456, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.4}], other)
    result = run("compare", files["results"], other, files["gt"], "--protocol", "oracle", "--json", out_json)
    assert result.exit_code == 2 and f"error: {other}: [0]: image_id 123456 is not in the ground truth" in result.output
    assert not out_json.exists()


@pytest.mark.parametrize(("args", "message"), [
    ([], "needs --val-results-a, --val-results-b and --val-gt"),
    (["--protocol", "fixed", "--threshold-a", "0.5"], "needs --threshold-a and --threshold-b"),
    (["--protocol", "oracle", "--threshold-a", "0.5"], "only used with --protocol fixed"),
    (["--protocol", "fixed", "--threshold-a", "0.5", "--threshold-b", "nan"], "not a finite number"),
    (["--protocol", "oracle", "--n-boot", "-5"], "--n-boot"),
    (["--protocol", "oracle", "--confidence", "0"], "0 < x < 1"),
    (["--protocol", "oracle", "--levels", "expert"], "not a level"),
])
def test_compare_bad_options_exit_2_and_write_nothing(files, tmp_path, args, message):
    out_json = tmp_path / "cmp.json"
    result = run("compare", files["results"], files["results"], files["gt"], *args, "--json", out_json)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out_json.exists()


def test_compare_missing_file_exit_2(files, tmp_path):
    out_json = tmp_path / "cmp.json"
    result = run("compare", files["results"], tmp_path / "missing.json", files["gt"], "--protocol", "oracle",
                 "--json", out_json)
    assert result.exit_code == 2 and "missing.json: file not found" in result.output
    assert not out_json.exists()
