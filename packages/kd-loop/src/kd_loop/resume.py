"""What a run's outputs depend on, recorded as ``WORKDIR/settings.json`` so that a resume with other settings is
refused instead of answering "done earlier" for every step.

The record holds every config key but the ones that do not shape a step's artefact (``workdir``: where the run
lives; ``rounds``: how far it goes, so a larger ``--rounds`` extends a run), with each input file named by its
resolved path and content (the SHA-256 of a JSON, the size and modification time of anything else, e.g. a
checkpoint) and each image folder by its resolved path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kd_loop.config import ConfigError, LoopConfig
from rpc_metrics.io import load_json, write_json

SETTINGS_FILE = "settings.json"
FREE_KEYS = ("rounds", "workdir")
FILE_KEYS = ("source.checkpoint", "pool.instances", "pool.gt", "val.instances", "calibration.instances",
             "test.instances")
FOLDER_KEYS = ("pool.images", "val.images", "calibration.images", "test.images")


def file_identity(path: Path) -> dict[str, Any]:
    """``path`` resolved, with its content's identity: a JSON's SHA-256, another file's size and mtime_ns."""
    path = Path(path).resolve()
    if path.suffix == ".json":
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"path": str(path), "sha256": digest.hexdigest()}
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def run_settings(config: LoopConfig) -> dict[str, Any]:
    """The settings a run records (as they read back from JSON)."""
    values = {k: v for k, v in config.values.items() if k not in FREE_KEYS}
    for key in FILE_KEYS:
        path = config.path(key)
        values[key] = file_identity(path) if path is not None and path.is_file() else values[key]
    for key in FOLDER_KEYS:
        path = config.path(key)
        values[key] = str(path.resolve()) if path is not None else ""
    values["source.datasets"] = [
        {**d, "instances": file_identity(config.base_dir / d["instances"]),
         "images": str((config.base_dir / d["images"]).resolve())} for d in values["source.datasets"]]
    return json.loads(json.dumps(values, default=str))


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if isinstance(value, str) or len(text) <= 80 else text[:77] + "..."  # a path whole


def _change(key: str, old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict) and old.get("path") == new.get("path") and "path" in old:
        return f"{key} {old['path']} changed since the run"
    if isinstance(old, dict) and isinstance(new, dict) and "path" in old and "path" in new:
        return f"{key} {old['path']} -> {new['path']}"
    return f"{key} {_shown(old)} -> {_shown(new)}"


def check_settings(workdir: Path, settings: dict[str, Any]) -> None:
    """Refuse (:class:`ConfigError`) a workdir whose recorded settings differ from ``settings``, naming each key
    that differs with its old and new value. A workdir without a record (new, or from before records) passes."""
    path = Path(workdir) / SETTINGS_FILE
    if not path.is_file():
        return
    old = load_json(path)
    changed = [_change(k, old.get(k), settings.get(k)) for k in sorted(old.keys() | settings.keys())
               if old.get(k) != settings.get(k)]
    if changed:
        raise ConfigError(f"{workdir} holds a run made with other settings ({'; '.join(changed)}); resume it with "
                          "its settings, or choose a new --workdir")


def keep_settings(workdir: Path, config: LoopConfig) -> None:
    """Check ``config`` against the workdir's record (:func:`check_settings`), then create the workdir and record
    them (a workdir from before records gets one)."""
    settings = run_settings(config)
    check_settings(workdir, settings)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    if not (Path(workdir) / SETTINGS_FILE).is_file():
        write_json(settings, Path(workdir) / SETTINGS_FILE, indent=1)
