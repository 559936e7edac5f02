"""The loop's TOML configuration: every key documented here, every key overridable as ``key=value``.

Paths are relative to the config file's folder. Example::

    rounds = 3
    seed = 0

    [learner]
    path = "dpsnet.kd:Learner"          # import path of a class implementing kd_loop.Learner
    kwargs = { preset = "cpu-small" }   # keyword arguments of its constructor

    [source]
    datasets = [{ instances = "synth/instances.json", images = "synth/images" }]

    [pool]
    instances = "world/instances_test2019.json"   # its annotations are dropped on load: labels never travel
    images = "world/test2019"
    gt = "world/instances_test2019.json"          # optional, reporting only

    [val]                                          # optional: the transfer protocol's threshold comes from here
    instances = "world/instances_val2019.json"
    images = "world/val2019"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_loop.selection import GRANULARITY, POLICIES

# key -> (default, help). A default of None means "required" for the keys in REQUIRED.
SCHEMA: dict[str, tuple[Any, str]] = {
    "rounds": (3, "number of distillation rounds after the source model"),
    "seed": (0, "seed of every random choice (source subsets, random control, the learner's runs)"),
    "workdir": ("runs/kd-loop", "folder of the run: round_000/ (source model), round_001/, ..., summary.md"),
    "learner.path": (None, "import path 'module:Class' of the learner (implements kd_loop.Learner)"),
    "learner.kwargs": ({}, "keyword arguments given to the learner's constructor"),
    "source.datasets": (None, "list of {instances, images, weight} tables: the labelled (synthesized) data"),
    "source.checkpoint": ("", "an existing source model to start from; empty: round_000 trains one on the source"),
    "pool.instances": (None, "instances JSON of the unlabeled checkout pool (annotations are dropped)"),
    "pool.images": (None, "image folder of the pool"),
    "pool.gt": ("", "ground truth of the pool, for reporting only (never seen by the selection)"),
    "val.instances": ("", "instances JSON with ground truth of a validation split (transfer protocol threshold)"),
    "val.images": ("", "image folder of the validation split"),
    "selection.policy": ("image+instance", "'image', 'instance', 'image+instance', or the controls 'random' (of image) and 'random-instance' (of instance)"),
    "selection.thresholds": ([0.80, 0.85, 0.90, 0.95], "score threshold per round (the last one repeats)"),
    "selection.target_precision": (0.0, "when > 0: each round's threshold is the lowest score at which the teacher's detections on the labelled val split are right this often (needs [val]; replaces selection.thresholds); 0: the fixed schedule"),
    "selection.count_classes": ("auto", "granularity of the count agreement: auto (the counts file's own classes), category, supercategory or object (a per-category counts file is summed into the coarser classes)"),
    "selection.min_boxes": (1, "an image is selected only with at least this many kept boxes"),
    "selection.ignore_threshold": (0.5, "instance level: detections scoring in [this, threshold) become ignore regions"),
    "mix.source_ratio": (1.0, "source images per pseudo-labelled image in a round's training mix"),
    "mix.student_init": ("teacher", "initialise the student from the 'teacher' or from 'scratch'"),
    "evaluate.search": ("exact", "threshold search of the reporting metrics: exact or grid"),
}
REQUIRED = ("learner.path", "source.datasets", "pool.instances", "pool.images")


class ConfigError(ValueError):
    """A config problem; the message names the key and what to do."""


@dataclass(frozen=True)
class LoopConfig:
    """The parsed configuration; ``values`` maps dotted keys to values, paths already resolved."""

    values: dict[str, Any]
    base_dir: Path = field(default=Path("."))

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def path(self, key: str) -> Path | None:
        value = self.values[key]
        return (self.base_dir / value) if value else None

    def threshold(self, round_index: int) -> float:
        """The selection threshold of round ``round_index`` (1-based)."""
        schedule = self.values["selection.thresholds"]
        return float(schedule[min(round_index, len(schedule)) - 1])


def _flatten(table: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted != "learner.kwargs":
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["selection.min_boxes=2", "learner.kwargs.steps=50"]`` -> dotted keys and TOML-parsed values."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} should look like key=value (e.g. selection.min_boxes=2)")
        parsed[key.strip()] = _parse_value(value.strip())
    return parsed


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                table: Mapping | None = None) -> LoopConfig:
    """Read a TOML config (or take ``table``), apply ``key=value`` overrides, check keys and values."""
    base_dir = Path(".")
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
        base_dir = path.resolve().parent
    flat = _flatten(table or {})
    for key, value in parse_overrides(overrides).items():
        if key.startswith("learner.kwargs."):
            kwargs = dict(flat.get("learner.kwargs", {}))
            kwargs[key.removeprefix("learner.kwargs.")] = value
            flat["learner.kwargs"] = kwargs
        else:
            flat[key] = value
    unknown = sorted(set(flat) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(sorted(SCHEMA))}")
    values = {key: flat.get(key, default) for key, (default, _) in SCHEMA.items()}
    missing = [key for key in REQUIRED if not values[key]]
    if missing:
        raise ConfigError(f"missing config key {missing[0]!r}: {SCHEMA[missing[0]][1]}")
    _check_values(values)
    return LoopConfig(values=values, base_dir=base_dir)


def _check_values(values: dict[str, Any]) -> None:
    if values["selection.policy"] not in POLICIES:
        raise ConfigError(f"selection.policy should be one of {POLICIES}, got {values['selection.policy']!r}")
    if values["selection.count_classes"] not in ("auto", *GRANULARITY):
        raise ConfigError("selection.count_classes should be auto, category, supercategory or object")
    if values["mix.student_init"] not in ("teacher", "scratch"):
        raise ConfigError("mix.student_init should be 'teacher' or 'scratch'")
    thresholds = values["selection.thresholds"]
    if not isinstance(thresholds, list) or not thresholds or not all(isinstance(t, (int, float)) for t in thresholds):
        raise ConfigError("selection.thresholds should be a non-empty list of numbers, e.g. [0.8, 0.85, 0.9, 0.95]")
    target = values["selection.target_precision"]
    if not isinstance(target, (int, float)) or not 0.0 <= target <= 1.0:
        raise ConfigError(f"selection.target_precision should be a number in [0, 1] (0: off), got {target!r}")
    if target > 0 and not values["val.instances"]:
        raise ConfigError("selection.target_precision calibrates on the labelled val split: set val.instances and "
                          "val.images, or set selection.target_precision=0 to use selection.thresholds")
    if not isinstance(values["rounds"], int) or values["rounds"] < 0:
        raise ConfigError("rounds should be a non-negative integer")
    datasets = values["source.datasets"]
    if not isinstance(datasets, list) or not all(isinstance(d, Mapping) and "instances" in d and "images" in d
                                                 for d in datasets):
        raise ConfigError("source.datasets should be a list of {instances = ..., images = ..., weight = ...} tables")
    if bool(values["val.instances"]) != bool(values["val.images"]):
        raise ConfigError("val.instances and val.images go together (both or neither)")
    if not isinstance(values["learner.kwargs"], Mapping):
        raise ConfigError("learner.kwargs should be a table of keyword arguments")
    if values["mix.source_ratio"] < 0:
        raise ConfigError("mix.source_ratio should be >= 0")


def describe_keys() -> str:
    """Every key with its default and help, for ``kd-loop run --help-config``."""
    return "\n".join(f"{key} = {default!r}\n    {text}" for key, (default, text) in SCHEMA.items())
