"""Every numeric option of every command of the toolkit's CLIs has a lower and an upper bound, and a value
outside them, or not a number, is refused at once: exit status 2, one output line naming the option, no
traceback, nothing written. In-process (click's CliRunner), so the ~400 cases take seconds."""

from __future__ import annotations

import importlib
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rpc_metrics.cliargs import FiniteFloat, NumberList

REPO = Path(__file__).resolve().parents[2]

# Options where no bound is right, with the reason (nan and inf are still refused).
UNBOUNDED = {
    ("rpc-metrics", "evaluate", "--threshold"): "compared with the results' scores, any finite number (logits too)",
    ("rpc-metrics", "errors", "--threshold"): "compared with the results' scores, any finite number (logits too)",
    ("rpc-metrics", "compare", "--threshold-a"): "compared with the results' scores, any finite number (logits too)",
    ("rpc-metrics", "compare", "--threshold-b"): "compared with the results' scores, any finite number (logits too)",
}
VALUES = ("nan", "-1", "0", "huge", "abc")


def _scripts() -> list[tuple[str, click.Group]]:
    """Every console script of the member packages with its click group (as the pyprojects declare them)."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = []
    for member in root["tool"]["aco"]["members"]:
        project = tomllib.loads((REPO / member / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        for script, target in project.get("scripts", {}).items():
            module, _, attribute = target.partition(":")
            scripts.append((script, getattr(importlib.import_module(module), attribute)))
    return sorted(scripts, key=lambda s: s[0])


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


@dataclass(frozen=True)
class Bounds:
    lo: float | None
    hi: float | None
    lo_open: bool
    hi_open: bool
    integer: bool

    def accepts(self, text: str) -> bool:
        """Whether ``text`` is a number of the option's kind within the bounds (the test's own reading)."""
        try:
            number = int(text) if self.integer else float(text)
        except ValueError:
            return False
        if not math.isfinite(number):
            return False
        below = self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo)
        above = self.hi is not None and (number >= self.hi if self.hi_open else number > self.hi)
        return not (below or above)

    def huge(self) -> str:
        return str(int(self.hi) + 1) if self.integer and self.hi is not None else "1e30"


def _bounds(kind: click.ParamType) -> Bounds | None:
    """The bounds of a numeric option's type; None for a type that is not numeric."""
    if isinstance(kind, NumberList):
        return _bounds(kind.element)
    if isinstance(kind, FiniteFloat):
        return Bounds(kind.lo, kind.hi, kind.lo_open, kind.hi_open, False)
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        assert not kind.clamp, "a clamping range accepts any number: refuse instead"
        return Bounds(kind.min, kind.max, kind.min_open, kind.max_open, isinstance(kind, click.IntRange))
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
        return Bounds(None, None, False, False, isinstance(kind, click.types.IntParamType))
    return None


def _numeric_options():
    for script, main in _scripts():
        for path, command in _commands(main):
            for param in command.params:
                if isinstance(param, click.Option) and not param.is_flag and _bounds(param.type) is not None:
                    yield script, main, path, command, param


OPTIONS = list(_numeric_options())


def _id(script, path, param) -> str:
    return f"{script} {' '.join(path)} {param.opts[0]}"


def _text(param: click.Option, text: str) -> str:
    """``text`` as the option's value: repeated to the length a list option takes."""
    count = param.type.count if isinstance(param.type, NumberList) else None
    return ",".join([text] * (count or 1))


@pytest.mark.parametrize("script, main, path, command, param", OPTIONS,
                         ids=[_id(s, p, o) for s, _, p, _, o in OPTIONS])
def test_numeric_option_has_both_bounds(script, main, path, command, param):
    bounds = _bounds(param.type)
    key = (script, " ".join(path), param.opts[0])
    if key in UNBOUNDED:
        assert bounds.lo is None and bounds.hi is None, f"{key} is bounded now: remove it from UNBOUNDED"
        return
    assert bounds.lo is not None, f"{_id(script, path, param)} has no lower bound"
    assert bounds.hi is not None, f"{_id(script, path, param)} has no upper bound"
    if isinstance(param.default, (int, float, str)):
        param.type.convert(param.default, param, click.Context(command))  # the default lies within the bounds


def test_unbounded_allowlist_names_existing_options():
    present = {(s, " ".join(p), o.opts[0]) for s, _, p, _, o in OPTIONS}
    assert set(UNBOUNDED) <= present


CASES = [(s, m, p, c, o, v) for s, m, p, c, o in OPTIONS for v in VALUES]


@pytest.mark.parametrize("script, main, path, command, param, value", CASES,
                         ids=[f"{_id(s, p, o)}={v}" for s, _, p, _, o, v in CASES])
def test_numeric_option_value(script, main, path, command, param, value, tmp_path, monkeypatch):
    bounds = _bounds(param.type)
    text = bounds.huge() if value == "huge" else value
    option_value = _text(param, text)
    if bounds.accepts(text):
        converted = param.type.convert(option_value, param, click.Context(command))
        assert converted is not None
        return
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # The bad option first: click processes parameters in command-line order, so its error comes before any
    # missing required option's.
    result = CliRunner().invoke(main, [*path, param.opts[0], option_value])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert any(name in lines[0] for name in param.opts), lines[0]
    assert list(cwd.iterdir()) == []
