"""Command-line values checked before any work starts, shared by the toolkit's CLIs (rpc-metrics, rpc-synth).

- :class:`FiniteFloat`: a float that refuses nan and inf (click's own float type accepts them), optionally in a
  range, so ``--threshold nan`` is a usage error (exit 2) naming the option.
- :class:`OutputPath`: a path the command will write (a file, or a folder) whose first existing ancestor is a
  writable folder: an output under a file or in a read-only folder is refused before anything is computed.
- :func:`os_error_line`: one line naming the file and what to do, for an :class:`OSError` met while writing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import click


class FiniteFloat(click.ParamType):
    """A finite float, optionally within ``[lo, hi]`` (``lo_open``/``hi_open``: the bound itself refused)."""

    name = "float"

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def _range(self) -> str:
        lo = "" if self.lo is None else f"{self.lo:g} {'<' if self.lo_open else '<='} "
        hi = "" if self.hi is None else f" {'<' if self.hi_open else '<='} {self.hi:g}"
        return f"{lo}x{hi}"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number; give a finite number ({self._range()})", param, ctx)
        if not math.isfinite(number):
            bounds = "" if self.lo is None and self.hi is None else f" with {self._range()}"
            self.fail(f"{value!r} is not a finite number; give a finite number{bounds}", param, ctx)
        below = self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo)
        above = self.hi is not None and (number >= self.hi if self.hi_open else number > self.hi)
        if below or above:
            self.fail(f"{value!r} is out of range; give a number with {self._range()}", param, ctx)
        return number


def output_problem(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written (None when it can): it is a folder where a file is expected (or a file where a
    folder is), or its first existing ancestor is a file or a folder this process may not write into."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            return "is a file, expected a folder; choose a folder path"
        if not folder and path.is_dir():
            return "is a folder, expected a file name; add a file name"
        target = path if folder else path.parent
        if not os.access(target, os.W_OK):
            return f"{target} is not writable; choose another output path or fix its permissions"
        return None
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder; choose another output path"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create it: {ancestor} is not writable; choose another output path or fix its permissions"
    return None


class OutputPath(click.Path):
    """:class:`click.Path` for an output, refused at parse time when :func:`output_problem` finds one."""

    def __init__(self, *, folder: bool = False):
        super().__init__(file_okay=not folder, dir_okay=folder)
        self.folder = folder

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        problem = output_problem(value, folder=self.folder)
        if problem:
            self.fail(f"{value}: {problem}", param, ctx)
        return value


def os_error_line(err: OSError) -> str:
    """One line for an :class:`OSError` on a file: its name, the system's reason and what to do."""
    name = err.filename if err.filename is not None else "a file"
    reason = err.strerror or type(err).__name__
    if isinstance(err, PermissionError):
        return f"{name}: {reason}; choose another output path or fix its permissions"
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        return f"{name}: {reason}; a file stands where a folder is needed, choose another output path"
    return f"{name}: {reason}; check the path"


class ToolGroup(click.Group):
    """A command group whose commands end an :class:`OSError` (an output folder that cannot be written, a file
    where a folder is needed) with one line (:func:`os_error_line`, after ``error_prefix``) and exit status 2."""

    error_prefix = "error: "

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise
        except OSError as err:
            click.echo(f"{self.error_prefix}{os_error_line(err)}", err=True)
            ctx.exit(2)
