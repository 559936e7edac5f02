"""Files on disk: the :class:`FormatError` every reader raises, JSON reading, atomic writing (JSON, bytes) and
image paths that stay inside their folder.

Every writer is atomic: it writes a temporary file in the same folder and renames it onto the final name, so a
killed or failed writer never leaves a half-written file there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_TMP = ".tmp"  # the mark of atomic_output's temporary files: .STEM.PID-RANDOM.tmpSUFFIX


class FormatError(ValueError):
    """A file does not follow its format. ``str(err)`` is one line: ``FILE: ENTRY: what is wrong``."""

    def __init__(self, source: str, entry: str, message: str):
        self.source, self.entry, self.message = source, entry, message
        super().__init__(f"{source}: {entry}: {message}" if entry else f"{source}: {message}")

    def __reduce__(self):  # picklable, so errors cross process boundaries (worker pools)
        return (FormatError, (self.source, self.entry, self.message))


def _source_name(obj: Any, source: str | None) -> str:
    if source is not None:
        return source
    return str(obj) if isinstance(obj, (str, os.PathLike)) else "<in-memory>"


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file raises :class:`FormatError` naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FormatError(str(path), "", "file not found; check the path") from None
    except IsADirectoryError:
        raise FormatError(str(path), "", "is a folder, expected a JSON file") from None
    except PermissionError:
        raise FormatError(str(path), "", "permission denied; fix the file's permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(str(path), "", f"malformed JSON ({err}); regenerate or fix the file") from None
    except RecursionError:
        raise FormatError(str(path), "", "JSON nested too deeply to be a toolkit file; check it is the right file") from None


def _load(obj: Any, source: str | None) -> tuple[Any, str]:
    """``obj`` loaded when it is a path (else taken as it is) and the name its errors give."""
    name = _source_name(obj, source)
    if isinstance(obj, (str, os.PathLike)):
        return load_json(obj), name
    return obj, name


@contextlib.contextmanager
def naming_os_errors(path: str | os.PathLike, *aliases: str | os.PathLike) -> Iterator[None]:
    """Give an :class:`OSError` raised inside the name ``path`` when it names no file (a failed ``write()``, e.g. on
    a full disk, names none) or one of ``aliases``, so that the error line says which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.errno is not None and (err.filename is None or str(err.filename) in map(str, aliases)):
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was, so a killed or failed
    writer never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name: remove_stale_temporaries() knows a killed writer's leftovers from a live one's.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}-", suffix=f"{_TMP}{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming_os_errors(path, tmp_path):  # not the hidden temporary file: the one being written
            yield tmp_path
            # mkstemp creates 0600 files; give the result the permissions of any newly created file.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Remove the temporary files that killed writers of :func:`atomic_output` left under ``folder`` (a writer
    still running on this machine keeps its own); the number removed. Call it before a run writes into a folder."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for tmp in folder.rglob(f".*{_TMP}*"):
        # mkstemp's 8 random characters; earlier releases wrote no pid.
        name = re.fullmatch(r"\..*\.(?:(\d+)-)?[a-z0-9_]{8}\.tmp(?:\.\w+)?", tmp.name)
        if name and tmp.is_file() and not (name.group(1) and _pid_alive(int(name.group(1)))):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` (e.g. an encoded image) to ``path`` atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_json(obj: Any, path: str | os.PathLike, *, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON atomically; NaN and infinity are refused (they are not JSON)."""
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, allow_nan=False, ensure_ascii=False, default=_json_default)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("ascii")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def image_path(image_dir: str | os.PathLike, file_name: str, *, source: str = "<dataset>") -> Path:
    """Join ``file_name`` to ``image_dir``, refusing names that leave the folder (``..``, absolute paths)."""
    root = Path(image_dir).resolve()
    if not isinstance(file_name, str) or not file_name:
        raise FormatError(source, f"file_name {file_name!r}", "must be a non-empty relative path")
    candidate = (root / file_name).resolve()
    if Path(file_name).is_absolute() or not candidate.is_relative_to(root):
        raise FormatError(
            source, f"file_name {file_name!r}", f"leaves the image folder {root}; use a path inside it"
        )
    return candidate
