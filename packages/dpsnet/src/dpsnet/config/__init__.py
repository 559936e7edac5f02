"""Training configuration: defaults, a preset or TOML file and ``key=value`` overrides made into one checked
config, printed with every key's help, and turned into typed sections and keyword arguments.

A config is a flat ``dict`` of dotted keys (``train.lr``), as TOML files write them in tables (``[train]``,
``lr = 0.02``), as ``key=value`` overrides name them and as checkpoints save them. The keys are the fields of
three typed sections (:mod:`dpsnet.config.keys`); :func:`sections` turns a flat config into them once, where a
run starts, and the code below takes their values as keyword arguments. Unknown keys are errors that list the valid ones; retired keys (:data:`RETIRED`) are errors that say
why, unless they hold the value that was kept.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from rpc_metrics import toml

from .keys import (
    CHOICES,
    DEFAULTS,
    HELP,
    RETIRED,
    SCHEMA,
    SECTIONS,
    DataSection,
    ModelSection,
    Sections,
    TrainSection,
)
from .ranges import range_problem

__all__ = ["CHOICES", "DEFAULTS", "HELP", "PRESETS", "RETIRED", "SCHEMA", "ConfigError", "DataSection", "ModelSection",
           "Sections", "TrainSection", "describe", "load_toml", "make_config", "model_kwargs", "parse_override",
           "scale_to_batch", "sections"]
PRESETS = ("cpu-small", "rpc-paper")


class ConfigError(ValueError):
    """A bad config key or value; the message says what is valid."""


def valid_keys_text() -> str:
    return ", ".join(DEFAULTS)


def _check_key(key: str, source: str) -> None:
    if key not in DEFAULTS:
        raise ConfigError(f"{source}: unknown config key {key!r}; valid keys: {valid_keys_text()}")


def _coerce(key: str, value: Any, source: str) -> Any:
    default = DEFAULTS[key]
    try:
        if isinstance(default, list):
            items = value if isinstance(value, list) else [v for v in str(value).split(",")]
            return [_coerce_item(default[0], v) for v in items]
        return _coerce_item(default, value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} should be a {type(default).__name__} like {default!r}, got {value!r}") from None


def _coerce_item(default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)
    if isinstance(default, str):
        return str(value).strip() if isinstance(value, str) else str(value)
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(float(value)) if isinstance(value, str) else int(value)
    return float(value)


def load_toml(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A preset's or TOML file's flat values and its name; a missing file raises ``FileNotFoundError``."""
    if name_or_path in PRESETS:
        text = resources.files("dpsnet").joinpath("presets", f"{name_or_path}.toml").read_text(encoding="utf-8")
        return toml.flatten(tomllib.loads(text)), f"preset {name_or_path}"
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (presets: {', '.join(PRESETS)})")
    try:
        return toml.flatten(tomllib.loads(path.read_text(encoding="utf-8"))), str(path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: malformed TOML ({str(err).splitlines()[0]}); give a UTF-8 TOML file") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` -> ``("train.lr", 0.01)`` (:func:`rpc_metrics.toml.parse_override`: the value read as
    TOML when it parses, else as text); a malformed override is a :class:`ConfigError` listing the valid keys."""
    try:
        return toml.parse_override(text)
    except ValueError as err:
        raise ConfigError(f"{err}, e.g. train.lr=0.01; valid keys: {valid_keys_text()}") from None


def _retired(key: str, value: Any, source: str) -> bool:
    """Whether ``key`` is retired; holding another value than the kept one is an error that says why."""
    if key not in RETIRED:
        return False
    kept, why = RETIRED[key]
    try:
        same = _coerce_item(kept, value) == kept
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ConfigError(f"{source}: {key} was retired ({why}); only {kept!r} remains, built in, got {value!r}")
    return True


def make_config(base: str | Mapping[str, Any] | None = None,
                overrides: Iterable[str] | Mapping[str, Any] = ()) -> dict[str, Any]:
    """Defaults, then ``base`` (a preset name, a TOML file or a saved flat config such as a checkpoint's), then
    ``overrides`` (``key=value`` strings or a dict)."""
    config = dict(DEFAULTS)
    layers = []
    if base:
        layers.append((dict(base), "saved config") if isinstance(base, Mapping) else load_toml(base))
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    layers.append((dict(items), "command line"))
    for values, source in layers:
        for key, value in values.items():
            if _retired(key, value, source):
                continue
            _check_key(key, source)
            config[key] = _coerce(key, value, source)
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise ConfigError(f"{key} should be one of {', '.join(repr(c) for c in choices)}, got {config[key]!r}")
    if problem := range_problem(config):
        raise ConfigError(problem)
    return config


def sections(config: Mapping[str, Any]) -> Sections:
    """A flat config (from :func:`make_config`) as typed sections."""
    return Sections(*(cls(**{f.name: config[f"{name}.{f.name}"] for f in fields(cls)})
                      for name, cls in SECTIONS.items()))


def describe(config: Mapping[str, Any] | None = None) -> str:
    """Every key with its value (default unless ``config`` says otherwise) and its help, as TOML comments."""
    config = config or DEFAULTS
    lines, section = [], None
    for key, _, text in SCHEMA:
        table, name = key.split(".", 1)
        if table != section:
            lines.append(f"\n[{table}]")
            section = table
        lines.append(f"# {text}")
        value = config[key]
        lines.append(f"{name} = {toml.toml_value(value)}")
    return "\n".join(lines).lstrip() + "\n"


SCHEDULE_KEYS = ("train.lr", "train.max_steps", "train.lr_steps", "train.warmup_steps")


def scale_to_batch(config: Mapping[str, Any], world_size: int = 1) -> dict[str, Any]:
    """The schedule keys (:data:`SCHEDULE_KEYS`) for the run's total batch ``train.batch_size x world_size``,
    given for ``train.reference_batch`` images per step (the linear rule: the lr times ``total / reference``,
    every step count times ``reference / total``, rounded, at least 1 for a positive count), so that each image
    meets the same learning rate whatever the number of processes. ``{}`` when ``train.reference_batch`` is 0.

    >>> scale_to_batch({"train.reference_batch": 8, "train.batch_size": 2, "train.lr": 0.01,
    ...                 "train.max_steps": 180000, "train.lr_steps": [120000, 160000], "train.warmup_steps": 500}, 1)
    {'train.lr': 0.0025, 'train.max_steps': 720000, 'train.lr_steps': [480000, 640000], 'train.warmup_steps': 2000}
    """
    reference = int(config["train.reference_batch"])
    if reference <= 0:
        return {}
    if world_size < 1:
        raise ValueError(f"world_size should be >= 1, got {world_size}")
    factor = config["train.batch_size"] * world_size / reference

    def steps(count: int) -> int:
        return max(1, round(count / factor)) if count > 0 else count

    return {"train.lr": config["train.lr"] * factor, "train.max_steps": steps(config["train.max_steps"]),
            "train.lr_steps": [steps(s) for s in config["train.lr_steps"]],
            "train.warmup_steps": steps(config["train.warmup_steps"])}


def model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`dpsnet.model.dpsnet_model` that the config sets."""
    kw = {key.removeprefix("model."): value for key, value in config.items()
          if key.startswith("model.") and key != "model.count_classes"}
    kw["backbone_weights"] = kw["backbone_weights"] or None
    kw["fpn_channels"] = kw["fpn_channels"] or None
    kw["norm"] = kw["norm"] or None
    kw["min_size"] = tuple(kw["min_size"])
    return kw
