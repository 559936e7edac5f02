"""Every bad input of ``kd-loop`` ends with exit status 2 and one error line naming the key, option or file,
before anything is written (no traceback, no workdir left behind)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import kd_loop.cli as cli

TESTS = Path(__file__).resolve().parent


def _refused(result, name: str) -> str:
    """The one error line of a refused command, checked to name ``name``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, result.output
    assert name in errors[0], (name, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(TESTS))  # the toy learner's module, and conftest's build_world
        from conftest import build_world

        yield build_world(tmp_path_factory.mktemp("bad_input_world"))


BAD_VALUES = [
    ("mix.source_ratio=abc", "mix.source_ratio"), ("mix.source_ratio=nan", "mix.source_ratio"),
    ("mix.source_ratio=-1", "mix.source_ratio"), ("mix.source_ratio=inf", "mix.source_ratio"),
    ("seed=-1", "seed"), ("seed=nan", "seed"), ("seed=1.5", "seed"), ('seed="x"', "seed"),
    ("seed=99999999999999999999", "seed"), ("rounds=-1", "rounds"), ("rounds=true", "rounds"), ("rounds=1001", "rounds"),
    ("selection.min_boxes=x", "selection.min_boxes"), ("selection.min_boxes=-5", "selection.min_boxes"),
    ("selection.min_boxes=1.5", "selection.min_boxes"), ("selection.min_boxes=nan", "selection.min_boxes"),
    ("selection.thresholds=[nan]", "selection.thresholds"), ("selection.thresholds=[7]", "selection.thresholds"),
    ("selection.thresholds=[-0.1]", "selection.thresholds"), ("selection.thresholds=[inf]", "selection.thresholds"),
    ("selection.thresholds=[]", "selection.thresholds"), ('selection.thresholds=["a"]', "selection.thresholds"),
    ("selection.ignore_threshold=2", "selection.ignore_threshold"),
    ("selection.ignore_threshold=nan", "selection.ignore_threshold"),
    ("evaluate.search=bogus", "evaluate.search"), ("evaluate.search=1", "evaluate.search"),
    ("learner.kwargs.bogus=1", "learner.kwargs.bogus"),
    ('learner.round_kwargs=[{}, { bogus = 1 }]', "bogus"),
]


@pytest.mark.parametrize(("override", "name"), BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_a_bad_config_value_is_refused_before_any_work(config, tmp_path, override, name):
    workdir = tmp_path / "w"
    result = CliRunner().invoke(cli.main, ["run", str(config), "--workdir", str(workdir), "--rounds", "1", override])
    _refused(result, name)
    assert not workdir.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rounds", ["-1", "abc", "1.5", "nan"])
def test_bad_rounds_option(config, tmp_path, rounds):
    result = CliRunner().invoke(cli.main, ["run", str(config), "--workdir", str(tmp_path / "w"), "--rounds", rounds])
    _refused(result, "--rounds")
    assert list(tmp_path.iterdir()) == []


def test_a_binary_config_file(tmp_path):
    binary = tmp_path / "loop.toml"
    binary.write_bytes(b"rounds = 1\n\xff\xfe\x00\x81garbage")
    result = CliRunner().invoke(cli.main, ["run", str(binary), "--workdir", str(tmp_path / "w")])
    assert "TOML" in _refused(result, str(binary))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.toml"]


def test_a_folder_as_config(tmp_path):
    result = CliRunner().invoke(cli.main, ["run", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_a_workdir_under_a_file(config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(cli.main, ["run", str(config), "--workdir", str(blocker / "w"), "--rounds", "0"])
    assert "is a file" in _refused(result, "workdir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_unwritable_workdir(config, tmp_path, monkeypatch):
    import rpc_metrics.cliargs

    # As root, permissions never refuse a write: the check is made to see a read-only folder.
    real = rpc_metrics.cliargs.os.access
    monkeypatch.setattr(rpc_metrics.cliargs.os, "access",
                        lambda path, mode: real(path, mode) and not str(path).startswith(str(tmp_path)))
    result = CliRunner().invoke(cli.main, ["run", str(config), "--workdir", str(tmp_path / "w"), "--rounds", "0"])
    assert "not writable" in _refused(result, "workdir")
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_during_the_run_is_one_line(config, tmp_path, monkeypatch):
    import kd_loop.loop

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "w" / "settings.json"))

    monkeypatch.setattr(kd_loop.loop, "keep_settings", denied)
    result = CliRunner().invoke(cli.main, ["run", str(config), "--workdir", str(tmp_path / "w"), "--rounds", "0"])
    assert "Permission denied" in _refused(result, "settings.json")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000])
def test_status_on_a_damaged_selection_file(tmp_path, content):
    round_dir = tmp_path / "round_001"
    round_dir.mkdir()
    (round_dir / "selection.json").write_bytes(content)
    (tmp_path / "round_000").mkdir()
    (tmp_path / "round_000" / "metrics.json").write_text(json.dumps({}))
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(cli.main, ["status", str(tmp_path)])
    _refused(result, "selection.json")
    assert sorted(tmp_path.rglob("*")) == before


class Picky:
    """A learner whose constructor refuses its arguments the way real ones do (a missing file, a bad value)."""

    def __init__(self, reclassifier: str = "", power: float = 0.5):
        if reclassifier:
            raise FileNotFoundError(f"reclassifier file not found: {reclassifier}")
        if power < 0:
            raise ValueError(f"power should be >= 0, got {power}")


@pytest.mark.parametrize(("override", "named"), [('learner.kwargs.reclassifier="absent.pt"', "absent.pt"),
                                                 ("learner.kwargs.power=-1", "power")])
def test_a_learner_refusing_its_kwargs_is_a_config_error(config, tmp_path, override, named):
    result = CliRunner().invoke(cli.main, ["run", str(config), "--workdir", str(tmp_path / "w"),
                                           'learner.path="test_bad_input:Picky"', "learner.kwargs={}", override])
    assert "learner.kwargs" in _refused(result, named)
    assert list(tmp_path.iterdir()) == []
