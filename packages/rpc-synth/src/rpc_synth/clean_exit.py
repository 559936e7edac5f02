"""The command line's answer to bad input: one line naming the file, option or entry, exit status 2, and nothing
left behind.

:func:`fail_cleanly` wraps each ``rpc-synth`` command: before it runs, the temporary files that a killed earlier
run left in its ``--out`` folder are removed (:func:`rpc_metrics.files.remove_stale_temporaries`); when it fails on
bad input (:class:`~rpc_metrics.io.FormatError`, :class:`~rpc_synth.records.InputError`, ``ValueError``) or on
an :class:`OSError` (an output that cannot be written), it prints one line, removes the output it created (an
``--out`` that did not exist before the run, with the folders made above it) and exits with status 2. An output
that existed is kept as it is: the commands resume into it. So is one that a write failing midway (a full disk)
leaves holding complete files (every write is atomic): a rerun of a resumable command goes on from them.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import sys
from pathlib import Path

import click

from rpc_metrics.cliargs import os_error_line
from rpc_metrics.files import remove_stale_temporaries
from rpc_metrics.io import FormatError

from .records import InputError


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (``path`` itself included) that does not exist yet; None if it exists."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists() and path.parent != path.parent.parent:
        path = path.parent
    return path


def _remove(created: Path | None) -> None:
    if created is None or not created.exists():
        return
    with contextlib.suppress(OSError):
        if created.is_dir():
            shutil.rmtree(created)
        else:
            created.unlink()


def _holds_files(path: Path | None) -> bool:
    """Whether ``path`` is a file or a folder holding one (writes are atomic: each such file is complete)."""
    if path is None or not path.exists():
        return False
    return path.is_file() or any(p.is_file() for p in path.rglob("*"))


def _exit(message: str) -> None:
    click.echo(f"rpc-synth: error: {message}", err=True)
    sys.exit(2)


def fail_cleanly(fn=None, *, resumable: bool = False):
    """Wrap a command whose output option is named ``out`` (see the module's docstring); ``resumable``: a rerun
    goes on from the complete outputs of a failed one (its error line says so). ``@fail_cleanly`` or
    ``@fail_cleanly(resumable=True)``."""
    if fn is None:
        return functools.partial(fail_cleanly, resumable=resumable)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = kwargs.get("out")
        created = _first_missing(Path(out)) if out else None
        try:
            if out and Path(out).is_dir():
                remove_stale_temporaries(out)
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise
        except OSError as err:
            if not _holds_files(created):  # nothing complete yet: leave no trace of the run
                _remove(created)
            _exit(os_error_line(err, resumable=resumable))
        except (FormatError, InputError, ValueError) as err:
            _remove(created)
            _exit("; ".join(str(err).splitlines()) or type(err).__name__)

    return wrapper
