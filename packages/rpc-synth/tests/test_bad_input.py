"""Every bad input a clean error: exit status 2, one error line naming the option, file or field (no traceback),
and nothing written or left behind in the output."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import os
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


# ------------------------------------------------------------------ render train / apply / measure: bad input files

RENDER_TINY = ("--size", 32, "--iters", 2, "--gen-channels", 4, "--gen-blocks", 1, "--disc-channels", 4, "--quiet")
FILE_KINDS = ["missing", "empty", "truncated", "foreign"]


def _refused_naming(result, name: str, folder: Path, before: list) -> None:
    """Exit 2 with one output line in all, naming ``name``; ``folder`` holds what it held ``before``."""
    assert_refused(result, name)
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    assert sorted(folder.rglob("*")) == before, sorted(set(folder.rglob("*")) - set(before))


def _bad_folder(folder: Path, kind: str, where: Path, listed: list[str] | None = None) -> tuple[Path, str]:
    """A broken copy of the image ``folder`` under ``where`` and the name its error should give: missing, empty,
    every image cut to half its bytes, or every image a text file of the same name. ``listed``: the file names an
    instances JSON lists (a missing folder then means missing images), else the folder is read as it is."""
    names = listed or sorted(p.name for p in folder.iterdir())
    bad = where / f"{folder.name}_{kind}"
    if kind != "missing":
        bad.mkdir()
    if kind in ("missing", "empty"):
        return bad, names[0] if listed else bad.name
    for name in names:
        data = (folder / name).read_bytes()
        (bad / name).write_bytes(data[:len(data) // 2] if kind == "truncated" else b"not an image, a note\n")
    return bad, f"{bad.name}{os.sep}"  # a file of that folder (training reads them in a random order)


def _listed(ann: Path) -> list[str]:
    return sorted(im["file_name"] for im in json.loads(ann.read_text())["images"])


@pytest.fixture
def render_inputs(tiny_world, tiny_generate, tmp_path):
    """Copies of the source images, their instances JSON and the target photos, for each test to break."""
    shutil.copytree(tiny_generate / "synth2019", tmp_path / "synth")
    shutil.copy(tiny_generate / "instances_synth2019.json", tmp_path / "ann.json")
    shutil.copytree(tiny_world / "val2019", tmp_path / "target")
    return tmp_path / "synth", tmp_path / "ann.json", tmp_path / "target"


@pytest.fixture(scope="module")
def translator(tiny_world, tiny_generate, tmp_path_factory):
    """A real (tiny, two iterations) translator checkpoint."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("translator") / "m.pt"
    result = run("render", "train", "--source", tiny_generate / "synth2019", "--source-ann",
                 tiny_generate / "instances_synth2019.json", "--target", tiny_world / "val2019", "--out", out,
                 *RENDER_TINY)
    assert result.exit_code == 0, result.output
    return out


def _bad_checkpoint(good: Path, kind: str, where: Path) -> Path:
    """A broken checkpoint: missing, empty, cut to half its bytes, or a torch file of another kind."""
    import torch

    bad = where / f"model_{kind}.pt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    elif kind == "foreign":  # another tool's checkpoint: a state dict, no render format
        torch.save({"model": {"weight": torch.zeros(2, 2)}, "iteration": 3}, bad)
    return bad


def _render_train(source, ann, target, out):
    return run("render", "train", "--source", source, "--source-ann", ann, "--target", target, "--out", out,
               *RENDER_TINY)


def _spoil(render_inputs, tmp_path, which: str, kind: str):
    """``render_inputs`` with one of them (``source`` images, ``ann`` JSON, ``target`` folder) made bad in the
    way ``kind``; returns the three and the name the error must give."""
    source, ann, target = render_inputs
    if which == "ann":
        ann = _bad_json(ann, kind)
        return source, ann, target, ann.name
    if which == "source":
        source, name = _bad_folder(source, kind, tmp_path, _listed(ann))
    else:
        target, name = _bad_folder(target, kind, tmp_path)
    return source, ann, target, name


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("which", ["source", "source-ann", "target"])
def test_render_train_bad_input(render_inputs, tmp_path, which, kind):
    pytest.importorskip("torch")
    source, ann, target, name = _spoil(render_inputs, tmp_path, which.replace("source-ann", "ann"), kind)
    before = sorted(tmp_path.rglob("*"))
    _refused_naming(_render_train(source, ann, target, tmp_path / "out" / "m.pt"), name, tmp_path, before)


@pytest.mark.parametrize("kind", ["empty", "truncated", "foreign"])
def test_render_train_refuses_a_bad_checkpoint_to_resume_and_keeps_it(render_inputs, translator, tmp_path, kind):
    source, ann, target = render_inputs
    out = _bad_checkpoint(translator, kind, tmp_path)
    data, before = out.read_bytes(), sorted(tmp_path.rglob("*"))
    _refused_naming(_render_train(source, ann, target, out), out.name, tmp_path, before)
    assert out.read_bytes() == data


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_render_apply_bad_model(render_inputs, translator, tmp_path, kind):
    source, ann, _ = render_inputs
    model = _bad_checkpoint(translator, kind, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = run("render", "apply", "--images", source, "--ann", ann, "--out", tmp_path / "out", "--model", model,
                 "--quiet")
    _refused_naming(result, model.name, tmp_path, before)


@pytest.mark.parametrize("method", ["histogram", "camera"])
@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("which", ["images", "ann", "target"])
def test_render_apply_bad_input(render_inputs, tmp_path, which, kind, method):
    source, ann, target, name = _spoil(render_inputs, tmp_path, which.replace("images", "source"), kind)
    before = sorted(tmp_path.rglob("*"))
    result = run("render", "apply", "--images", source, "--ann", ann, "--out", tmp_path / "out", "--method", method,
                 "--target", target, "--quiet")
    _refused_naming(result, name, tmp_path, before)


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("which", ["images", "ann", "target", "rendered"])
def test_render_measure_bad_input(render_inputs, tmp_path, which, kind):
    source, ann, target = render_inputs
    rendered = source
    if which == "ann":
        ann = _bad_json(ann, kind)
        name = ann.name
    elif which in ("images", "rendered"):
        bad, name = _bad_folder(source, kind, tmp_path, _listed(ann))
        source, rendered = (bad, rendered) if which == "images" else (source, bad)
    else:
        target, name = _bad_folder(target, kind, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = run("render", "measure", "--images", source, "--ann", ann, "--target", target, "--rendered", rendered)
    _refused_naming(result, name, tmp_path, before)


# ------------------------------------------------------------------ a write that fails midway (a full disk)

def _fail_a_write(monkeypatch, fail_at: int) -> list[Path]:
    """Make the ``fail_at``-th atomic write fail on a full disk: its temporary file is made a link to /dev/full,
    where every write fails with ENOSPC as the system gives it (Python's ``write()`` names no file, torch's own
    writer raises a RuntimeError). Returns the list that receives the path of the file that was being written."""
    real, count, failed = metrics_files.tempfile.mkstemp, itertools.count(1), []

    def mkstemp(*, prefix, suffix, dir):
        fd, tmp = real(prefix=prefix, suffix=suffix, dir=dir)
        if next(count) == fail_at:  # the temporary file of PATH is .STEM.PID-RANDOM.tmpSUFFIX beside it
            failed.append(Path(dir) / (prefix[1:].rsplit(".", 1)[0] + suffix.removeprefix(".tmp")))
            os.unlink(tmp)
            os.symlink("/dev/full", tmp)
        return fd, tmp

    monkeypatch.setattr(metrics_files.tempfile, "mkstemp", mkstemp)
    return failed


@pytest.fixture(scope="module")
def resumable(tiny_world, tiny_poses, tiny_generate, tmp_path_factory, helpers):
    """Resumable writers at a small size, each as ``(run into OUT, the bytes of an uninterrupted run)``."""
    folder = tmp_path_factory.mktemp("resumable")
    dataset = json.loads((tiny_world / "instances_train2019.json").read_text())
    ids = {im["id"] for im in dataset["images"][:3]}
    subset = {**dataset, "images": dataset["images"][:3],
              "annotations": [a for a in dataset["annotations"] if a["image_id"] in ids]}
    (folder / "three.json").write_text(json.dumps(subset))
    commands = {
        "generate": lambda out: run("generate", "--exemplars", tiny_poses, "--images", tiny_world / "train2019",
                                    "--out", out, "--num-images", 4, "--size", 96, "--seed", 1, "--quiet"),
        "masks": lambda out: run("masks", "--instances", folder / "three.json", "--images", tiny_world / "train2019",
                                 "--out", out, "--refine-px", 64, "--quiet"),
        "render train": lambda out: run("render", "train", "--source", tiny_generate / "synth2019", "--source-ann",
                                        tiny_generate / "instances_synth2019.json", "--target",
                                        tiny_world / "val2019", "--out", out / "m.pt", "--checkpoint-every", 1,
                                        *RENDER_TINY),
    }
    if importlib.util.find_spec("torch") is None:
        del commands["render train"]
    runs = {}
    for name, command in commands.items():
        assert command(folder / name).exit_code == 0
        runs[name] = (command, helpers.files_bytes(folder / name))
    return runs


# The writes of generate: its record (generate.json), then per image its JPEG and its part file, last the dataset
# JSON (10 for 4 images); of masks: its record (masks.json), per exemplar its mask PNG and part file, last the
# dataset JSON (8 for 3 exemplars); of render train: a checkpoint per iteration (2).
@pytest.mark.parametrize("command, fail_at", [("generate", 2), ("generate", 5), ("generate", 6), ("generate", 10),
                                              ("masks", 2), ("masks", 5), ("masks", 8), ("render train", 2)])
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux), a device that is always full")
def test_after_a_failed_write_a_rerun_resumes_to_the_same_bytes(resumable, tmp_path, monkeypatch, helpers, command,
                                                                 fail_at):
    if command not in resumable:
        pytest.skip(f"{command} needs torch")
    invoke, uninterrupted = resumable[command]
    out = tmp_path / "out"
    failed = _fail_a_write(monkeypatch, fail_at)
    result = invoke(out)
    assert_refused(result, str(failed[0]))
    assert "No space left" in result.output and "resumes from the complete outputs kept" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    kept = helpers.files_bytes(out)
    # Complete files only: those of the uninterrupted run, or the earlier checkpoint a rerun trains on from.
    assert kept and all(uninterrupted[name] == data or name == "m.pt" for name, data in kept.items())
    monkeypatch.undo()
    again = invoke(out)
    assert again.exit_code == 0, again.output
    _assert_same_outputs(helpers.files_bytes(out), uninterrupted)


def _assert_same_outputs(got: dict[str, bytes], expected: dict[str, bytes]) -> None:
    """The same files with the same bytes; a checkpoint (``.pt``) with the same contents (a resumed optimizer's
    state pickles its tensors in another order)."""
    assert sorted(got) == sorted(expected)
    for name, data in got.items():
        if name.endswith(".pt"):
            import torch

            a, b = (torch.load(io.BytesIO(d), weights_only=True) for d in (data, expected[name]))
            assert _equal(a, b), name
        else:
            assert data == expected[name], name


def _equal(a, b) -> bool:
    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b
