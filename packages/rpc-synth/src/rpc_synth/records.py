"""Settings records of the resumable stages (``world``, ``masks``, ``generate``): each writes what its outputs
depend on into its output folder, and a rerun with other settings is refused with :class:`InputError` (exit
status 2 on the command line), naming each setting that differs, instead of mixing old and new outputs.

Input files are named by :func:`file_identity` (resolved path and content), image folders by their resolved path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rpc_metrics.io import load_json, write_json


class InputError(ValueError):
    """A request that the inputs cannot satisfy (for example a SKU with no kept exemplar)."""


def file_identity(source: Any) -> dict[str, str]:
    """A JSON input by resolved path and the SHA-256 of its bytes; an in-memory object by the SHA-256 of its JSON."""
    if isinstance(source, (str, Path)):
        path = Path(source).resolve()
        return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"path": "<in-memory>", "sha256": hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys (``config.seed``); a file identity (an object with a path) stays whole."""
    if isinstance(value, dict) and "path" not in value:
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.removesuffix("."): value}


def _change(key: str, old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        if old.get("path") == new.get("path"):
            return f"{key}: {old['path']} changed since"
        return f"{key}: {old.get('path')} -> {new.get('path')}"
    shown = [json.dumps(v) if isinstance(v, str) or len(json.dumps(v)) <= 60 else json.dumps(v)[:57] + "..."
             for v in (old, new)]  # a path whole, a long list cut short
    return f"{key} {shown[0]} -> {shown[1]}"


def changed_settings(old: dict, new: dict, *, since: tuple[str, ...] = ()) -> list[str]:
    """``key old -> new`` for each setting (dotted key) that differs; keys of ``since`` (recorded only by newer
    versions) are not compared when the old record lacks them."""
    old, new = _flat(old), _flat(new)
    return [_change(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and not (k in since and k not in old)]


def check_record(path: Path, settings: dict, *, what: str, since: tuple[str, ...] = ()) -> bool:
    """Compare the record at ``path`` with this run's ``settings`` (as they read back from JSON); return whether
    one exists. Differences raise :class:`InputError`: ``OUT holds <what> made with other settings (...)``."""
    if not path.is_file():
        return False
    changed = changed_settings(load_json(path), settings, since=since)
    if changed:
        raise InputError(f"{path.parent} holds {what} made with other settings ({'; '.join(changed)}); use the same "
                         "settings, or a new --out to start over")
    return True


def keep_record(path: Path, settings: dict, *, what: str, since: tuple[str, ...] = ()) -> None:
    """:func:`check_record`, then write ``settings`` to ``path`` (a new folder's record, or one that gained keys)."""
    settings = json.loads(json.dumps(settings))
    if not check_record(path, settings, what=what, since=since) or load_json(path) != settings:
        write_json(settings, path, indent=1)
