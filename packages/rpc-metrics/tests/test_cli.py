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
