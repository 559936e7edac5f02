"""Every bad input of ``dpsnet`` ends with exit status 2 and one error line naming the option, key or file,
before anything is written: no traceback, and the output folder holds nothing new afterwards."""

import errno
import io
import os
import pickle

import pytest
import torch
from click.testing import CliRunner

from dpsnet.cli import main
from dpsnet.config import make_config
from dpsnet.training import train

from .conftest import tiny_overrides


def _files(folder):
    return sorted((p.relative_to(folder), p.stat().st_size) for p in folder.rglob("*"))


def _refused(result, *names: str) -> str:
    """The one error line of a refused command, checked to name each of ``names``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("good_run")
    train(make_config("cpu-small", tiny_overrides(world, **{"train.max_steps": 1})), out, echo=False)
    return out / "last.pt"


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _Foreign:
    pass


BAD_FILES = {
    "empty": b"",
    "text": b"hello, not a checkpoint\n",
    "truncated": _torch_bytes({"model": {"w": torch.zeros(64, 64)}, "categories": {}})[:300],
    "foreign_pickle": pickle.dumps(_Foreign()),
    "a_list": _torch_bytes([1, 2, 3]),
    "keyless": _torch_bytes({"model": {}}),
    "no_categories": _torch_bytes({"model": {}, "model_kwargs": {}}),
    "bad_categories": _torch_bytes({"model": {}, "model_kwargs": {}, "categories": {"nope": 1}}),
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request, tmp_path):
    path = tmp_path / "inputs" / f"{request.param}.pt"
    path.parent.mkdir()
    path.write_bytes(BAD_FILES[request.param])
    return path


def test_predict_refuses_a_bad_checkpoint(world, tmp_path, bad_file):
    out = tmp_path / "out"
    out.mkdir()
    result = _invoke("predict", "--checkpoint", bad_file, "--instances", world / "pool.json", "--images",
                     world / "images", "--out-results", out / "r.json", "--out-counts", out / "c.json", "--quiet")
    assert "not a readable dpsnet checkpoint" in _refused(result, str(bad_file))
    assert _files(out) == []


def test_visualize_refuses_a_bad_checkpoint(world, tmp_path, bad_file):
    result = _invoke("visualize", "--checkpoint", bad_file, "--instances", world / "pool.json", "--images",
                     world / "images", "--out", tmp_path / "vis")
    assert "not a readable dpsnet checkpoint" in _refused(result, str(bad_file))
    assert not (tmp_path / "vis").exists()


def test_train_resume_refuses_a_bad_last_checkpoint(world, tmp_path, bad_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(bad_file.read_bytes())
    before = _files(run)
    result = _invoke("train", "--out", run, "--resume")
    assert "not a readable dpsnet checkpoint" in _refused(result, str(run / "last.pt"))
    assert _files(run) == before


def test_export_refuses_a_bad_checkpoint(tmp_path, bad_file):
    result = _invoke("export", "--checkpoint", bad_file, "--threshold", "0.5", "--out", tmp_path / "out" / "b.pt")
    assert "not a readable dpsnet checkpoint" in _refused(result, str(bad_file))
    assert not (tmp_path / "out").exists()


def test_count_refuses_a_bad_bundle(world, tmp_path, bad_file):
    result = _invoke("count", world / "images", "--model", bad_file, "--json", tmp_path / "out" / "c.jsonl")
    assert "dpsnet bundle" in _refused(result, str(bad_file))
    assert not (tmp_path / "out").exists()


def test_crop_accuracy_refuses_a_bad_classifier(world, tmp_path, bad_file):
    result = _invoke("crop-accuracy", "--classifier", bad_file, "--instances", world / "instances.json", "--images",
                     world / "images", "--json-out", tmp_path / "acc.json")
    line = _refused(result, str(bad_file))
    assert "not a readable dpsnet pretrain file" in line or "no classifier layer" in line
    assert not (tmp_path / "acc.json").exists()


@pytest.mark.parametrize("name", ["text", "truncated", "keyless", "a_list"])
def test_predict_refuses_a_bad_reclassifier(world, checkpoint, tmp_path, name):
    bad = tmp_path / f"{name}.pt"
    bad.write_bytes(BAD_FILES[name])
    out = tmp_path / "out"
    out.mkdir()
    result = _invoke("predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images",
                     world / "images", "--out-results", out / "r.json", "--out-counts", out / "c.json",
                     "--reclassifier", bad, "--quiet")
    _refused(result, str(bad))
    assert _files(out) == []


def test_train_init_checkpoint_names_its_key(world, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(BAD_FILES["truncated"])
    overrides = [f"{k}={v!r}".replace("'", '"') for k, v in tiny_overrides(world).items()]
    result = _invoke("train", "--out", tmp_path / "run", *overrides, f'train.init_checkpoint="{bad}"')
    _refused(result, "train.init_checkpoint", "not a readable dpsnet checkpoint")
    assert not (tmp_path / "run").exists()


def _predict_args(world, checkpoint, out):
    return ["predict", "--checkpoint", checkpoint, "--instances", world / "pool.json", "--images", world / "images",
            "--out-results", out / "r.json", "--out-counts", out / "c.json", "--quiet"]


BAD_OPTIONS = [
    # (command, option, value)
    ("predict", "--device", "tpu"), ("predict", "--device", "cuda:x"), ("predict", "--device", ""),
    ("predict", "--score-thresh", "nan"), ("predict", "--score-thresh", "-0.1"), ("predict", "--score-thresh", "2"),
    ("predict", "--score-thresh", "inf"), ("predict", "--score-thresh", "abc"),
    ("predict", "--batch-size", "0"), ("predict", "--batch-size", "-3"), ("predict", "--batch-size", "1.5"),
    ("predict", "--batch-size", "99999999999"), ("predict", "--batch-size", "x"),
    ("visualize", "--limit", "-1"), ("visualize", "--limit", "0"), ("visualize", "--limit", "nan"),
    ("visualize", "--score-thresh", "nan"), ("visualize", "--score-thresh", "7"), ("visualize", "--device", "tpu"),
    ("pretrain", "--size", "0"), ("pretrain", "--size", "-64"), ("pretrain", "--size", "100000"),
    ("pretrain", "--size", "x"), ("pretrain", "--channels", "-8,8,8,8"), ("pretrain", "--channels", "8,8,8"),
    ("pretrain", "--channels", "a,b,c,d"), ("pretrain", "--channels", "0,8,8,8"), ("pretrain", "--channels", "1,8,8,8"), ("pretrain", "--size", "8"),
    ("pretrain", "--channels", "8,8,8,99999999"),
    ("pretrain", "--steps", "0"), ("pretrain", "--steps", "-1"), ("pretrain", "--steps", "nan"),
    ("pretrain", "--batch-size", "0"), ("pretrain", "--lr", "nan"), ("pretrain", "--lr", "0"),
    ("pretrain", "--lr", "-1"), ("pretrain", "--lr", "inf"), ("pretrain", "--seed", "-1"),
    ("export", "--threshold", "nan"), ("export", "--threshold", "1.5"), ("export", "--score-thresh", "nan"),
    ("predict", "--agnostic-nms", "nan"), ("predict", "--agnostic-nms", "1.5"), ("predict", "--test-flip-iou", "0"),
    ("predict", "--test-flip-iou", "nan"), ("predict", "--reclassifier-power", "nan"),
    ("predict", "--reclassifier-power", "-1"), ("pretrain", "--camera", "nan"), ("pretrain", "--camera", "-0.5"),
    ("pretrain", "--specialist-min-rate", "nan"), ("pretrain", "--specialist-steps", "-1"),
    ("pretrain", "--max-specialists", "-1"), ("export", "--agnostic-nms", "nan"),
    ("count", "--batch-size", "0"), ("count", "--device", "tpu"),
    ("evaluate", "--threshold", "nan"), ("crop-accuracy", "--top", "-1"),
]


def _command(world, tmp_path, command, option, value):
    fake = tmp_path / "inputs" / "model.pt"
    fake.parent.mkdir(exist_ok=True)
    fake.write_bytes(b"x")
    out = tmp_path / "out"
    base = {
        "predict": _predict_args(world, fake, out),
        "visualize": ["visualize", "--checkpoint", fake, "--instances", world / "pool.json", "--images",
                      world / "images", "--out", out / "vis"],
        "pretrain": ["pretrain", "--instances", world / "instances.json", "--images", world / "images", "--out",
                     out / "w.pt"],
        "export": ["export", "--checkpoint", fake, "--threshold", "0.5", "--out", out / "b.pt"],
        "count": ["count", world / "images", "--model", fake, "--json", out / "c.jsonl"],
        "evaluate": ["evaluate", "--results", fake, "--gt", world / "instances.json", "--protocol", "fixed",
                     "--json-out", out / "m.json"],
        "crop-accuracy": ["crop-accuracy", "--classifier", fake, "--instances", world / "instances.json",
                          "--images", world / "images"],
    }[command]
    return [*base, option, value]


@pytest.mark.parametrize(("command", "option", "value"), BAD_OPTIONS, ids=["-".join(c) for c in BAD_OPTIONS])
def test_a_bad_option_value_is_refused_before_any_work(world, tmp_path, command, option, value):
    out = tmp_path / "out"
    out.mkdir()
    result = _invoke(*_command(world, tmp_path, command, option, value))
    _refused(result, option)
    assert _files(out) == []


BAD_KEYS = ["train.max_steps=0", "train.max_steps=-5", "train.batch_size=0", "train.lr=nan", "train.lr=-0.1",
            "train.lr=inf", "train.device=tpu", "model.small_channels=[-8,8,8,8]", "data.hflip=2",
            "model.box_score_thresh=nan", "train.log_every=0", "train.max_steps=abc"]


@pytest.mark.parametrize("override", BAD_KEYS)
def test_a_bad_config_value_is_refused_before_any_work(world, tmp_path, override):
    result = _invoke("train", "--out", tmp_path / "run", override)
    _refused(result, override.split("=")[0])
    assert list(tmp_path.iterdir()) == []


OUTPUTS = [
    ("predict", "--out-results", "r.json"), ("predict", "--out-counts", "c.json"), ("visualize", "--out", "vis"),
    ("pretrain", "--out", "w.pt"), ("export", "--out", "b.pt"), ("count", "--json", "c.jsonl"),
    ("count", "--draw", "drawn"), ("evaluate", "--json-out", "m.json"), ("train", "--out", "run"),
]


def _with_output(world, tmp_path, command, option, target):
    if command == "train":
        return ["train", "--out", target, *[f"{k}={v!r}".replace("'", '"') for k, v in tiny_overrides(world).items()]]
    args = _command(world, tmp_path, command, "--quiet" if command in ("predict", "count") else "--help", "")[:-2]
    if option in args:
        args[args.index(option) + 1] = target
    else:
        args += [option, target]
    return args


@pytest.mark.parametrize(("command", "option", "name"), OUTPUTS, ids=["-".join(c[:2]) for c in OUTPUTS])
def test_an_output_under_a_file_is_refused(world, tmp_path, command, option, name):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    result = _invoke(*_with_output(world, tmp_path, command, option, blocker / name))
    assert "is a file" in _refused(result, option)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "inputs"] or command == "train"
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize(("command", "option", "name"), OUTPUTS, ids=["-".join(c[:2]) for c in OUTPUTS])
def test_an_unwritable_output_folder_is_refused(world, tmp_path, monkeypatch, command, option, name):
    import rpc_metrics.cliargs

    locked = tmp_path / "locked"
    locked.mkdir()
    real = rpc_metrics.cliargs.os.access  # as root, permissions never refuse: the check is made to see them
    monkeypatch.setattr(rpc_metrics.cliargs.os, "access",
                        lambda path, mode: real(path, mode) and not str(path).startswith(str(locked)))
    result = _invoke(*_with_output(world, tmp_path, command, option, locked / name))
    assert "not writable" in _refused(result, option)
    assert list(locked.iterdir()) == []


def test_an_os_error_while_writing_is_one_line(world, tmp_path, monkeypatch):
    import dpsnet.training

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run" / "config.toml"))

    monkeypatch.setattr(dpsnet.training, "train", denied)
    result = _invoke(*_with_output(world, tmp_path, "train", "--out", tmp_path / "run"))
    assert "Permission denied" in _refused(result, "config.toml")


def test_deeply_nested_json_is_a_clean_error(world, tmp_path):
    deep = tmp_path / "inputs" / "deep.json"
    deep.parent.mkdir()
    deep.write_text("[" * 200_000 + "]" * 200_000)
    out = tmp_path / "out"
    out.mkdir()
    result = _invoke("evaluate", "--results", deep, "--gt", world / "instances.json", "--json-out", out / "m.json")
    _refused(result, str(deep))
    assert _files(out) == []


@pytest.mark.parametrize(("kwargs", "named"), [({"device": "tpu"}, "device"), ({"batch_size": 0}, "batch_size"),
                                               ({"overrides": {"train.max_steps": 0}}, "train.max_steps"),
                                               ({"overrides": {"train.lr": float("nan")}}, "train.lr")])
def test_the_kd_learner_refuses_bad_arguments_at_construction(kwargs, named):
    from dpsnet.kd import Learner

    with pytest.raises(ValueError, match=named):
        Learner(**kwargs)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), a device that is always full")
def test_a_checkpoint_written_to_a_full_disk_is_an_os_error_naming_it(tmp_path, monkeypatch):
    """torch's own file writer turns a full disk into a RuntimeError (a traceback); written through a Python file,
    it is an OSError naming the checkpoint (one line from the CLI), and nothing is left behind."""
    import rpc_metrics.files
    from dpsnet.checkpoint import save_checkpoint

    real = rpc_metrics.files.tempfile.mkstemp

    def full_disk(**kwargs):
        fd, tmp = real(**kwargs)
        os.unlink(tmp)
        os.symlink("/dev/full", tmp)
        return fd, tmp

    monkeypatch.setattr(rpc_metrics.files.tempfile, "mkstemp", full_disk)
    with pytest.raises(OSError) as raised:
        save_checkpoint({"model": {"weight": torch.zeros(64, 64)}}, tmp_path / "last.pt")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), a device that is always full")
def test_a_log_line_written_to_a_full_disk_is_an_os_error_naming_it(tmp_path):
    from dpsnet.training.records import RunLog

    (tmp_path / "log.jsonl").symlink_to("/dev/full")
    with pytest.raises(OSError) as raised:
        RunLog(jsonl=tmp_path / "log.jsonl", echo=False).write({"type": "start"}, "start")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "log.jsonl")


def test_predict_refuses_a_truncated_jpeg(world, checkpoint, tmp_path):
    """OpenCV decodes a JPEG cut short without an error (the missing rows grey): refused, naming the file."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(world / "images", images)
    import cv2

    victim = sorted(p for p in images.iterdir() if p.is_file())[0]
    _, jpeg = cv2.imencode(".jpg", cv2.imread(str(victim)))  # content decides the decoder, not the name
    victim.write_bytes(jpeg.tobytes()[: jpeg.size // 2])
    out = tmp_path / "out"
    out.mkdir()
    args = _predict_args(world, checkpoint, out)
    args[args.index("--images") + 1] = images
    _refused(_invoke(*args), victim.name, "cut short")
    assert _files(out) == []
