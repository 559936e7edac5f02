"""Command-line values checked before any work starts, shared by the toolkit's CLIs (rpc-metrics, rpc-synth).

- :class:`FiniteFloat`: a float that refuses nan and inf (click's own float type accepts them), optionally in a
  range, so ``--threshold nan`` is a usage error (exit 2) naming the option.
- :class:`OutputPath`: a path the command will write (a file, or a folder) whose first existing ancestor is a
  writable folder: an output under a file or in a read-only folder is refused before anything is computed.
- :class:`NumberList`: comma-separated numbers, each checked by a bounded element type (pixel sizes, widths).
- :func:`os_error_line`: one line naming the file and what to do, for an :class:`OSError` met while writing.
- :class:`ToolGroup`: the command group of every CLI: usage errors and :class:`OSError` end with one line, exit 2.
- Shared bounds (``SEED``, ``WORKERS``, ``THREADS``, ``MAX_*``): every numeric option has a lower and an upper one.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import os
from pathlib import Path

import click

# Upper bounds far above any real use, low enough to refuse a typo (an extra zero or two) before any work starts.
MAX_SEED = 2**32 - 1  # numpy's legacy seed range; seeds are stored in records and compared on resume
MAX_WORKERS = 256  # processes or threads: more than the cores of any one machine
MAX_IMAGES = 10_000_000  # images in one set (RPC, the largest checkout dataset: 83,739 images)
MAX_ITERATIONS = 10_000_000  # optimiser steps or iterations of one run
MAX_RESAMPLES = 100_000  # bootstrap resamples (1000 is usual; intervals stop moving long before)
MAX_IMAGE_SIDE = 16384  # px (RPC checkout images: about 1815)

SEED = click.IntRange(0, MAX_SEED)
WORKERS = click.IntRange(1, MAX_WORKERS)
THREADS = click.IntRange(0, MAX_WORKERS)  # 0: the library's default


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


class NumberList(click.ParamType):
    """Comma-separated numbers, each converted by ``element`` (a bounded click type: :class:`FiniteFloat`,
    :class:`click.IntRange`); ``count`` of them (any number from one when None); ``order`` ``"<"``: strictly
    increasing, ``"<="``: non-decreasing. Converts to a tuple; the bounds are ``element``'s."""

    name = "list"

    def __init__(self, element: click.ParamType, *, count: int | None = None, order: str | None = None,
                 example: str = ""):
        self.element, self.count, self.order, self.example = element, count, order, example

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):  # click may pass a value it has already converted
            return value
        texts = [t.strip() for t in str(value).split(",")]
        hint = f"; give comma-separated numbers like {self.example}" if self.example else ""
        if self.count is not None and len(texts) != self.count:
            self.fail(f"{value!r} should be {self.count} comma-separated numbers{hint}", param, ctx)
        numbers = []
        for text in texts:
            try:
                numbers.append(self.element.convert(text, param, ctx))
            except click.BadParameter as err:
                where = f"{value!r}: " if len(texts) > 1 else ""
                self.fail(f"{where}{err.message}{hint}", param, ctx)
        if self.order and any(b < a or (b == a and self.order == "<") for a, b in itertools.pairwise(numbers)):
            kind = "increasing" if self.order == "<" else "non-decreasing"
            self.fail(f"{value!r} should be {kind}{hint}", param, ctx)
        return tuple(numbers)


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


# A full disk, or a full quota (no EDQUOT on some platforms).
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def os_error_line(err: OSError, *, resumable: bool = False) -> str:
    """One line for an :class:`OSError` on a file: its name, the system's reason and what to do (``resumable``:
    the command keeps its complete outputs and a rerun resumes from them)."""
    name = err.filename if err.filename is not None else "a file"
    reason = err.strerror or type(err).__name__
    if err.errno in _DISK_FULL:
        again = ("run the same command again: it resumes from the complete outputs kept" if resumable
                 else "run the same command again")
        return f"{name}: {reason}; free some space, then {again}"
    if isinstance(err, PermissionError):
        return f"{name}: {reason}; choose another output path or fix its permissions"
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        return f"{name}: {reason}; a file stands where a folder is needed, choose another output path"
    return f"{name}: {reason}; check the path"


class OneLineUsageError(click.UsageError):
    """A usage error shown on one line, click's message and where help is, instead of click's three (usage, hint,
    message): ``Error: Invalid value for '--size': ... (see 'rpc-synth generate --help')``."""

    def show(self, file=None) -> None:
        message = " ".join(line.strip() for line in self.format_message().splitlines() if line.strip())
        hint = ""
        if self.ctx is not None and self.ctx.command.get_help_option(self.ctx) is not None:
            option = max(self.ctx.command.get_help_option_names(self.ctx), key=len)
            hint = f" (see '{self.ctx.command_path} {option}')"
        click.echo(f"Error: {message}{hint}", file=file, err=file is None)


@contextlib.contextmanager
def _one_line_usage_errors():
    try:
        yield
    except (OneLineUsageError, click.exceptions.NoArgsIsHelpError):  # the latter shows the help, as it should
        raise
    except click.UsageError as err:
        raise OneLineUsageError(err.format_message(), err.ctx) from None


class ToolGroup(click.Group):
    """The command group of the toolkit's CLIs: a usage error (a missing option, a bad value, an unknown option
    or command) is one line (:class:`OneLineUsageError`); an :class:`OSError` (an output folder that cannot be
    written, a file where a folder is needed) is one line too (:func:`os_error_line`, after ``error_prefix``,
    ``"error: "`` unless given); both exit with status 2."""

    def __init__(self, *args, error_prefix: str = "error: ", **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx):
        try:
            with _one_line_usage_errors():
                return super().invoke(ctx)
        except BrokenPipeError:
            raise
        except OSError as err:
            click.echo(f"{self.error_prefix}{os_error_line(err)}", err=True)
            ctx.exit(2)
