"""Every bad input a clean error: exit status 2, one error line naming the option, file or field (no traceback),
and nothing new written beside the inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rpc_metrics import files as metrics_files
from rpc_metrics.cli import main
from rpc_metrics.cliargs import FiniteFloat, output_problem
from rpc_metrics.files import atomic_output, remove_stale_temporaries


@pytest.fixture
def case(tmp_path, make_case):
    gt, results = make_case(4, n_images=12)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path, gt, results


def refused(tmp_path: Path, name: str, *args) -> None:
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if "error:" in line.lower()]
    assert len(errors) == 1, result.output
    assert name in errors[0], errors[0]
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "abc"])
def test_fixed_threshold_must_be_finite(case, value):
    tmp_path = case[0]
    refused(tmp_path, "--threshold", "evaluate", tmp_path / "results.json", tmp_path / "gt.json", "--protocol",
            "fixed", "--threshold", value)
    refused(tmp_path, "--threshold-a", "compare", tmp_path / "results.json", tmp_path / "results.json",
            tmp_path / "gt.json", "--protocol", "fixed", "--threshold-a", value, "--threshold-b", "0.5")


@pytest.mark.parametrize("option, value", [("--confidence", "nan"), ("--confidence", "1.5"), ("--confidence", "0"),
                                           ("--intervals", "-1"), ("--interval-seed", "x"), ("--levels", "huge")])
def test_evaluate_bad_option(case, option, value):
    tmp_path = case[0]
    refused(tmp_path, option, "evaluate", tmp_path / "results.json", tmp_path / "gt.json", option, value)


@pytest.mark.parametrize("option, value", [
    ("--size-bins", "nan,inf"), ("--size-bins", "16,inf"), ("--size-bins", "nan"), ("--size-bins", "0,16"),
    ("--size-bins", "32,16"), ("--size-bins", "a,b"), ("--iou", "nan"), ("--iou", "0"), ("--iou", "2"),
    ("--top", "-1"),
])
def test_errors_bad_option(case, option, value):
    tmp_path = case[0]
    refused(tmp_path, option, "errors", tmp_path / "results.json", tmp_path / "gt.json", option, value)


def _break(obj, where: str):
    if where == "results bbox":
        obj[0]["bbox"] = ["1", *obj[0]["bbox"][1:]]
    elif where == "results bbox bool":
        obj[0]["bbox"] = [True, *obj[0]["bbox"][1:]]
    elif where == "gt bbox":
        obj["annotations"][0]["bbox"] = ["1", *obj["annotations"][0]["bbox"][1:]]
    elif where == "gt area":
        obj["annotations"][0]["area"] = "5"
    elif where == "gt point_xy":
        obj["annotations"][0]["point_xy"] = ["1", 2]
    return obj


@pytest.mark.parametrize("where, field", [("results bbox", "bbox"), ("results bbox bool", "bbox"),
                                          ("gt bbox", "bbox"), ("gt area", "area"), ("gt point_xy", "point_xy")])
def test_numbers_given_as_text_are_refused(case, where, field):
    tmp_path, gt, results = case
    name = "results.json" if where.startswith("results") else "gt.json"
    (tmp_path / name).write_text(json.dumps(_break(results if name == "results.json" else gt, where)))
    for command in ("evaluate", "validate"):
        args = [tmp_path / name] if command == "validate" else [tmp_path / "results.json", tmp_path / "gt.json"]
        refused(tmp_path, field, command, *args)


def test_gt_without_images_is_refused(case):
    tmp_path, gt, _ = case
    (tmp_path / "empty_gt.json").write_text(json.dumps({**gt, "images": [], "annotations": []}))
    (tmp_path / "none.json").write_text("[]")
    for command in ("evaluate", "errors"):
        refused(tmp_path, "empty_gt.json: images: no images", command, tmp_path / "none.json",
                tmp_path / "empty_gt.json")


def _bad_file(tmp_path: Path, kind: str, foreign: str) -> Path:
    path = tmp_path / f"bad_{kind}.json"
    if kind == "missing":
        return path
    texts = {"empty": "", "truncated": '[{"image_id": 1, "categ', "nested": "[" * 100_000 + "]" * 100_000,
             "foreign": (tmp_path / foreign).read_text()}
    path.write_text(texts[kind])
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "nested", "foreign"])
@pytest.mark.parametrize("role", ["results", "gt"])
def test_bad_input_files(case, kind, role):
    tmp_path = case[0]
    bad = _bad_file(tmp_path, kind, "gt.json" if role == "results" else "results.json")
    files = [bad, tmp_path / "gt.json"] if role == "results" else [tmp_path / "results.json", bad]
    refused(tmp_path, bad.name, "evaluate", *files)
    refused(tmp_path, bad.name, "errors", *files)
    if kind != "foreign":
        refused(tmp_path, bad.name, "validate", bad)


@pytest.mark.parametrize("option", ["--json", "--per-category"])
def test_output_under_a_file_or_unwritable(case, monkeypatch, option):
    tmp_path = case[0]
    (tmp_path / "afile").write_text("x")
    inputs = (tmp_path / "results.json", tmp_path / "gt.json")
    refused(tmp_path, "afile", "evaluate", *inputs, option, tmp_path / "afile" / "rows.out")
    refused(tmp_path, option, "evaluate", *inputs, option, tmp_path)  # a folder
    monkeypatch.setattr("rpc_metrics.cliargs.os.access", lambda path, mode: False)
    refused(tmp_path, "not writable", "evaluate", *inputs, option, tmp_path / "out" / "rows.out")


def test_permission_error_while_writing_is_one_line(case, monkeypatch):
    tmp_path = case[0]

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir", "?"))

    monkeypatch.setattr(metrics_files.tempfile, "mkstemp", refuse)
    refused(tmp_path, "Permission denied", "errors", tmp_path / "results.json", tmp_path / "gt.json", "--json",
            tmp_path / "rows.json")


def test_finite_float_and_output_problem(tmp_path):
    assert FiniteFloat(0, 1).convert("0.5", None, None) == 0.5
    (tmp_path / "f").write_text("x")
    assert output_problem(tmp_path / "new" / "deeper" / "x.json") is None
    assert "is a file" in output_problem(tmp_path / "f" / "x.json")
    assert "is a folder" in output_problem(tmp_path)
    assert "is a file" in output_problem(tmp_path / "f", folder=True)


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    dead = tmp_path / "sub" / ".rows.999999999-abcdefgh.tmp.json"  # beyond any pid_max: a killed writer
    old_style = tmp_path / ".rows.k2j4h5g6.tmp.json"  # earlier releases' names carry no pid
    live = tmp_path / f".rows.{os.getpid()}-abcdefgh.tmp.json"
    mine = tmp_path / ".notes.tmp.txt"
    for path in (dead, old_style, live, mine):
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == 2
    assert not dead.exists() and not old_style.exists() and live.exists() and mine.exists()
    with atomic_output(tmp_path / "rows.json") as tmp:
        assert f".{os.getpid()}-" in tmp.name
