"""Every bad input a clean error: exit status 2, one error line naming the option, file or field (no traceback),
and nothing written or left behind in the output."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from rpc_metrics import files as metrics_files
from rpc_synth.cli import main
from rpc_synth.image_files import folder_images


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, name: str, out: Path | None = None) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if "error:" in line.lower()]
    assert len(errors) == 1, result.output
    assert name in errors[0], errors[0]
    if out is not None:
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))


WORLD = ("--skus", 10, "--azimuths", 2, "--elevations", "0,90", "--exemplar-size", 96, "--size", 160, "--val", 3,
         "--test", 3, "--pool", 0, "--quiet")


@pytest.mark.parametrize("option, value", [
    ("--val", "-6"), ("--val", "x"), ("--test", "-1"), ("--pool", "1.5"), ("--lookalike-pairs", "-1"),
    ("--lookalike-pairs", "6"), ("--lookalike-pairs", "100000"), ("--gap", "nan"), ("--gap", "inf"),
    ("--density", "-1"), ("--product-size", "nan"), ("--lying", "nan"), ("--seed", "-1"), ("--skus", "0"),
    ("--size", "0"), ("--size", "100000"), ("--exemplar-size", "abc"), ("--azimuths", "0"), ("--workers", "0"),
    ("--elevations", "nan"), ("--elevations", "0,120"), ("--elevations", "a,b"),
])
def test_world_bad_option(tmp_path, option, value):
    assert_refused(run("world", "--out", tmp_path / "w", *WORLD, option, value), option, tmp_path / "w")


def _png_header(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


@pytest.fixture
def exemplars(tiny_world, tmp_path):
    """A copy of the tiny world's exemplar photos and instances JSON, for each test to break."""
    shutil.copytree(tiny_world / "train2019", tmp_path / "images")
    shutil.copy(tiny_world / "instances_train2019.json", tmp_path / "instances.json")
    return tmp_path / "instances.json", tmp_path / "images"


def _masks(instances, images, out, *extra):
    return run("masks", "--instances", instances, "--images", images, "--out", out, "--quiet", *extra)


@pytest.mark.parametrize("value", ["0", "-5", "10", "nan", "1e9"])
def test_masks_refine_px_below_the_minimum(tmp_path, value):
    out = tmp_path / "m"
    assert_refused(_masks(tmp_path / "i.json", tmp_path, out, "--refine-px", value), "--refine-px", out)


def test_masks_decompression_bomb_png(exemplars, tmp_path):
    instances, images = exemplars
    first = json.loads(instances.read_text())["images"][0]["file_name"]
    _png_header(images / first, 100_000, 100_000)
    out = tmp_path / "m"
    assert_refused(_masks(instances, images, out), first, out)


def _bad_json(path: Path, kind: str) -> Path:
    if kind == "missing":
        return path.parent / "absent.json"
    text = {"empty": "", "truncated": '{"images": [{"id": 1, "file_na', "nested": "[" * 100_000 + "]" * 100_000,
            "foreign": json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}])}[kind]
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "nested", "foreign"])
def test_masks_bad_instances_file(exemplars, tmp_path, kind):
    instances, images = exemplars
    bad = _bad_json(instances, kind)
    assert_refused(_masks(bad, images, tmp_path / "m"), bad.name, tmp_path / "m")


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "nested", "foreign"])
def test_generate_bad_exemplars_file(exemplars, tmp_path, kind):
    instances, images = exemplars
    bad = _bad_json(instances, kind)
    out = tmp_path / "g"
    result = run("generate", "--exemplars", bad, "--images", images, "--out", out, "--num-images", 1, "--size", 96,
                 "--quiet")
    assert_refused(result, bad.name, out)


@pytest.mark.parametrize("option, value", [
    ("--max-iou", "-1"), ("--max-iou", "1.5"), ("--max-iou", "nan"), ("--jpeg-quality", "500"),
    ("--jpeg-quality", "0"), ("--jpeg-quality", "-1"), ("--jpeg-quality", "high"), ("--color-jitter", "5"),
    ("--color-jitter", "1"), ("--color-jitter", "-0.1"), ("--color-jitter", "nan"), ("--color-jitter", "inf"),
    ("--min-visible", "nan"), ("--shadow-strength", "2"), ("--num-images", "0"), ("--size", "10"),
    ("--seed", "-1"), ("--workers", "0"), ("--squash", "nan"),
])
def test_generate_bad_option(tmp_path, option, value):
    out = tmp_path / "g"
    result = run("generate", "--exemplars", tmp_path / "e.json", "--images", tmp_path, "--out", out, option, value)
    assert_refused(result, option, out)


@pytest.mark.parametrize("setting, value", [("max_iou", -1), ("jpeg_quality", 500), ("color_jitter", 5)])
def test_generate_bad_settings_file(exemplars, tmp_path, setting, value):
    instances, images = exemplars
    (tmp_path / "settings.json").write_text(json.dumps({"generate": {setting: value}}))
    out = tmp_path / "g"
    result = run("generate", "--exemplars", instances, "--images", images, "--out", out, "--settings",
                 tmp_path / "settings.json", "--quiet")
    assert_refused(result, setting, out)


@pytest.mark.parametrize("args, option", [
    (("poses", "--masks", "m.json", "--out", "p.json", "--threshold", "nan"), "--threshold"),
    (("poses", "--masks", "m.json", "--out", "p.json", "--threshold", "-1"), "--threshold"),
    (("render", "measure", "--images", ".", "--ann", "a.json", "--target", ".", "--iou-threshold", "nan"),
     "--iou-threshold"),
    (("render", "measure", "--images", ".", "--ann", "a.json", "--target", ".", "--workers", "0"), "--workers"),
    (("render", "apply", "--images", ".", "--ann", "a.json", "--out", "r", "--jpeg-quality", "500"), "--jpeg-quality"),
    (("render", "train", "--source", ".", "--source-ann", "a.json", "--target", ".", "--out", "c.pt", "--lr", "nan"),
     "--lr"),
    (("render", "train", "--source", ".", "--source-ann", "a.json", "--target", ".", "--out", "c.pt", "--iters",
      "0"), "--iters"),
    (("catalog", "--catalog", ".", "--out", "c", "--refine-px", "0"), "--refine-px"),
    (("fit", "--exemplars", "e.json", "--images", ".", "--out", "s.json", "--seed", "-1"), "--seed"),
])
def test_other_commands_bad_option(tmp_path, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    assert_refused(run(*args), option)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["world", "masks", "generate", "poses", "fit"])
def test_output_under_a_file(tmp_path, command):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out"
    args = {"world": ("world", *WORLD), "masks": ("masks", "--instances", "i.json", "--images", tmp_path),
            "generate": ("generate", "--exemplars", "e.json", "--images", tmp_path),
            "poses": ("poses", "--masks", "m.json"), "fit": ("fit", "--exemplars", "e.json", "--images", tmp_path)}
    assert_refused(run(*args[command], "--out", out), "afile")


def test_unwritable_output_folder_is_refused_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr("rpc_metrics.cliargs.os.access", lambda path, mode: False)
    out = tmp_path / "w"
    assert_refused(run("world", "--out", out, *WORLD), "not writable", out)


def test_permission_error_while_writing_is_one_line(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir", "?"))

    monkeypatch.setattr(metrics_files.tempfile, "mkstemp", refuse)
    out = tmp_path / "w"
    assert_refused(run("world", "--out", out, *WORLD), "Permission denied", out)


def test_stale_temporary_files_are_removed_on_the_next_run(exemplars, tmp_path):
    instances, images = exemplars
    out = tmp_path / "m"
    out.mkdir()
    stale = out / ".instances_masks.999999999-abcdefgh.tmp.json"  # no process has this pid: a killed writer's
    stale.write_text("{")
    keep = out / ".notes.tmp.txt"  # not a temporary file of this toolkit
    keep.write_text("mine")
    assert _masks(instances, images, out, "--refine-px", 64).exit_code == 0
    assert not stale.exists() and keep.exists()


def test_folder_images_leave_hidden_files_out(tmp_path):
    (tmp_path / "._photo.jpg").write_bytes(b"Mac OS X resource fork")  # a macOS companion
    (tmp_path / ".photo.1234-abcdefgh.tmp.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    assert [p.name for p in folder_images(tmp_path)] == ["photo.jpg"]
