"""Each console script as a user runs it, in its own process: ``--version`` answers, and bad input (a value out of
range, a missing file) ends with exit status 2 and one line on stderr, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _scripts() -> list[str]:
    root = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return sorted(script for member in root["tool"]["aco"]["members"]
                  for script in tomllib.loads((REPO / member / "pyproject.toml").read_text(encoding="utf-8"))
                  ["project"].get("scripts", {}))


# Per script: a value out of an option's range, and an input file that is not there.
BAD_INPUT = {
    "dpsnet": [["predict", "--batch-size", "0"], ["evaluate", "--results", "missing.json", "--gt", "missing.json"]],
    "kd-loop": [["run", "--rounds", "-1", "loop.toml"], ["run", "missing.toml"]],
    "rpc-metrics": [["errors", "--iou", "2", "r.json", "g.json"], ["validate", "missing.json"]],
    "rpc-synth": [["generate", "--num-images", "0"], ["poses", "--masks", "missing.json", "--out", "poses.json"]],
}


def _run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / script, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_script_has_its_cases():
    assert sorted(BAD_INPUT) == _scripts()


@pytest.mark.parametrize("script", _scripts())
def test_version(script, tmp_path):
    result = _run(script, ["--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{script}, version ")


@pytest.mark.parametrize("script, args", [(s, a) for s, cases in sorted(BAD_INPUT.items()) for a in cases],
                         ids=[f"{s}-{a[0]}-{a[1]}" for s, cases in sorted(BAD_INPUT.items()) for a in cases])
def test_bad_input_is_one_line_and_exit_2(script, args, tmp_path):
    result = _run(script, args, tmp_path)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stdout == "", (result.stdout, result.stderr)
    assert "error" in result.stderr.lower()
    assert list(tmp_path.iterdir()) == []
