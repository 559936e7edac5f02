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

    [calibration]                                  # optional labelled split the selection calibrates on (default: val)
    instances = "synth_heldout/instances.json"
    images = "synth_heldout/images"

    [test]                                         # optional, reporting only: each round's accuracy on it
    instances = "world/instances_test2019.json"
    images = "world/test2019"
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_loop.selection import GRANULARITY, POLICIES, RANDOM_CONTROL
from rpc_metrics import toml

# key -> (default, help). A default of None means "required" for the keys in REQUIRED.
SCHEMA: dict[str, tuple[Any, str]] = {
    "rounds": (3, "number of distillation rounds after the source model"),
    "seed": (0, "seed of every random choice (source subsets, random control, the learner's runs)"),
    "workdir": ("runs/kd-loop", "folder of the run: round_000/ (source model), round_001/, ..., summary.md"),
    "learner.path": (None, "import path 'module:Class' of the learner (implements kd_loop.Learner)"),
    "learner.kwargs": ({}, "keyword arguments given to the learner's constructor"),
    "learner.round_kwargs": ([], "per round (the last entry repeating): keyword arguments merged into learner.kwargs for that round's student, tables key by key (e.g. [{}, { overrides = { \"train.lr\" = 1e-4 } }]); []: learner.kwargs every round; round 0 (the source model) always uses learner.kwargs"),
    "source.datasets": (None, "list of {instances, images, weight} tables: the labelled (synthesized) data"),
    "source.checkpoint": ("", "an existing source model to start from; empty: round_000 trains one on the source"),
    "pool.instances": (None, "instances JSON of the unlabeled checkout pool (annotations are dropped)"),
    "pool.images": (None, "image folder of the pool"),
    "pool.gt": ("", "ground truth of the pool, for reporting only (never seen by the selection)"),
    "val.instances": ("", "instances JSON with ground truth of a validation split (transfer protocol threshold)"),
    "val.images": ("", "image folder of the validation split"),
    "calibration.instances": ("", "instances JSON with ground truth the selection calibrates on (target_precision, count_scale 'auto'), e.g. held-out synthesized images; empty: the val split"),
    "calibration.images": ("", "image folder of the calibration split"),
    "test.instances": ("", "instances JSON with ground truth of a test split, reporting only: each round's model is measured on it (the pool's own files: its predictions are reused, transductive)"),
    "test.images": ("", "image folder of the test split"),
    "selection.policy": ("image+instance", "'image', 'instance', 'image+instance', or the controls 'random' (of image) and 'random-instance' (of instance)"),
    "selection.policies": ([], "per round (the last entry repeating): the policy of each round's selection, e.g. [\"image\", \"image\", \"instance\"] for image-level rounds then an instance-level last stage; []: selection.policy every round (give one of the two)"),
    "selection.control": ("none", "'random': the same-compute control of the schedule, every round's policy replaced by its random counterpart (image, image+instance, random -> random; instance, random-instance -> random-instance), as many images or labels as the label-free policy would keep; 'none': off"),
    "selection.thresholds": ([0.80, 0.85, 0.90, 0.95], "score threshold per round (the last one repeats)"),
    "selection.target_precision": (0.0, "when > 0: each round's threshold is the lowest score at which the teacher's detections on the labelled calibration split are right this often (needs [calibration] or [val]; replaces selection.thresholds); 0: the fixed schedule"),
    "selection.count_scale": ("auto", "the counting view's counts are multiplied by this before rounding in the agreement check: 'auto' (each round, true objects / counted on the calibration split, clipped to [0.25, 4]; 1 without one), 'none' (1) or a positive number"),
    "selection.min_share": (0.1, "a round should keep at least ceil(this x pool images) images (0: no minimum); below it the image-level policies call selection.fallback, and the summary says so loudly"),
    "selection.fallback": ("closest", "when fewer images agree than selection.min_share asks: 'closest' adds the other images with the least disagreement sum |detections - scaled count| (then lowest image id); 'none' adds none"),
    "selection.count_classes": ("auto", "granularity of the count agreement: auto (the counts file's own classes), category, supercategory or object (a per-category counts file is summed into the coarser classes)"),
    "selection.min_boxes": (1, "an image is selected only with at least this many kept boxes"),
    "selection.ignore_threshold": (0.5, "instance level: detections scoring in [this, threshold) become ignore regions"),
    "mix.source_ratio": (1.0, "source images per pseudo-labelled image in a round's training mix"),
    "mix.source_ratios": ([], "per round (the last entry repeating): mix.source_ratio of each round, e.g. [1.0, 0.0] for a last stage on pseudo-labels alone; []: mix.source_ratio every round (give one of the two)"),
    "mix.source_images": (0, "when > 0: every round whose source ratio is > 0 draws this fixed number of source images (all of them when fewer), however many pool images were selected (the released DPSNet draws 100000 a round); 0: source ratio x pseudo-labelled images"),
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
        return float(_per_round(self.values["selection.thresholds"], round_index))

    def policy(self, round_index: int) -> str:
        """The selection policy of round ``round_index`` (1-based): ``selection.policies`` (the last entry
        repeating) or ``selection.policy``, turned into its random counterpart under ``selection.control``."""
        policy = _per_round(self.values["selection.policies"] or [self.values["selection.policy"]], round_index)
        return RANDOM_CONTROL[policy] if self.values["selection.control"] == "random" else policy

    def source_ratio(self, round_index: int) -> float:
        """Source images per pseudo-labelled image in round ``round_index``'s mix."""
        return float(_per_round(self.values["mix.source_ratios"] or [self.values["mix.source_ratio"]], round_index))

    def source_images(self, round_index: int, pseudo_images: int) -> int:
        """How many source images round ``round_index`` draws beside ``pseudo_images`` pseudo-labelled ones
        (before capping at the source datasets' size): none without pseudo-labels or at a ratio of 0, else
        ``mix.source_images`` when set, else the ratio times the pseudo-labelled images."""
        ratio = self.source_ratio(round_index)
        if pseudo_images == 0 or ratio == 0:
            return 0
        fixed = int(self.values["mix.source_images"])
        return fixed if fixed > 0 else round(ratio * pseudo_images)

    def learner_kwargs(self, round_index: int) -> dict[str, Any]:
        """The learner's keyword arguments in round ``round_index`` (0: the source model, ``learner.kwargs``)."""
        base = dict(self.values["learner.kwargs"])
        extra = self.values["learner.round_kwargs"]
        return merge_tables(base, _per_round(extra, round_index)) if extra and round_index > 0 else base

    def schedule(self, rounds: int) -> list[dict[str, Any]]:
        """Rounds ``1..rounds`` as the loop runs them: policy, threshold (None when calibrated each round),
        ignore threshold, source ratio, fixed source images (0: by ratio) and the learner's keyword arguments."""
        calibrated = float(self.values["selection.target_precision"]) > 0
        return [{"round": r, "policy": self.policy(r), "threshold": None if calibrated else self.threshold(r),
                 "ignore_threshold": min(float(self.values["selection.ignore_threshold"]), self.threshold(r)),
                 "source_ratio": self.source_ratio(r), "source_images": int(self.values["mix.source_images"]),
                 "learner_kwargs": self.learner_kwargs(r)} for r in range(1, rounds + 1)]


def _per_round(schedule: Sequence, round_index: int) -> Any:
    """Entry ``round_index`` (1-based) of a per-round list, its last entry repeating."""
    return schedule[min(max(round_index, 1), len(schedule)) - 1]


def merge_tables(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, tables merged key by key (at any depth), other values replaced."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        merged[key] = merge_tables(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return merged


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["selection.min_boxes=2", "learner.kwargs.steps=50"]`` -> dotted keys and TOML-parsed values
    (:func:`rpc_metrics.toml.parse_overrides`); a malformed one is a :class:`ConfigError` with an example."""
    try:
        return toml.parse_overrides(overrides)
    except ValueError as err:
        raise ConfigError(f"{err} (e.g. selection.min_boxes=2)") from None


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
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid TOML ({str(err).splitlines()[0]}); give a UTF-8 TOML config") \
                from None
        except OSError as err:  # a folder, an unreadable file
            raise ConfigError(f"{path}: cannot read the config ({err.strerror or err}); give a readable TOML file") \
                from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to be a kd-loop config") from None
        base_dir = path.resolve().parent
    flat = toml.flatten(table or {}, leaves=("learner.kwargs",))
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
    _check_values(values, given=set(flat))
    return LoopConfig(values=values, base_dir=base_dir)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(values: dict[str, Any], key: str, low: float, high: float = math.inf, *,
                  integer: bool = False, low_open: bool = False, hint: str = "") -> None:
    """Raise a ConfigError naming ``key`` unless its value is a finite number (an integer) in the range."""
    value = values[key]
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else _is_number(value)
    if not ok or not (low < value if low_open else low <= value) or not value <= high:
        kind = "an integer" if integer else "a number"
        lo, hi = (str(int(b)) if integer and math.isfinite(b) else f"{b:g}" for b in (low, high))
        bounds = f"{'(' if low_open else '['}{lo}, {hi}]" if high < math.inf else f"{'>' if low_open else '>='} {lo}"
        raise ConfigError(f"{key} should be {kind} {'in ' if high < math.inf else ''}{bounds}{hint}, got {value!r}")


def _check_splits(values: dict[str, Any]) -> None:
    for split in ("val", "calibration", "test"):
        if bool(values[f"{split}.instances"]) != bool(values[f"{split}.images"]):
            raise ConfigError(f"{split}.instances and {split}.images go together (both or neither)")
    if values["selection.target_precision"] > 0 and not (values["val.instances"] or values["calibration.instances"]):
        raise ConfigError("selection.target_precision calibrates on a labelled split, and none is given: set "
                          "val.instances and val.images (or calibration.instances and calibration.images), or "
                          "set selection.target_precision=0 to use selection.thresholds")


def _check_selection(values: dict[str, Any]) -> None:
    scale = values["selection.count_scale"]
    if scale not in ("auto", "none") and not (_is_number(scale) and scale > 0):
        raise ConfigError(f"selection.count_scale should be 'auto', 'none' or a positive number, got {scale!r}")
    _check_number(values, "selection.min_share", 0.0, 1.0, hint=" (0: no minimum)")
    if values["selection.fallback"] not in ("closest", "none"):
        raise ConfigError(f"selection.fallback should be 'closest' or 'none', got {values['selection.fallback']!r}")
    _check_number(values, "selection.min_boxes", 0, integer=True)
    _check_number(values, "selection.ignore_threshold", 0.0, 1.0)


def _check_number_list(values: dict[str, Any], key: str, low: float, example: str) -> None:
    items = values[key]
    if not isinstance(items, list) or not all(_is_number(v) and v >= low for v in items):
        raise ConfigError(f"{key} should be a list of numbers >= {low:g} (one per round, the last repeating; "
                          f"[]: none), e.g. {example}, got {items!r}")


def _check_rounds(values: dict[str, Any], given: set[str]) -> None:
    """The per-round lists: each entry valid, and never given beside the single value they replace."""
    policies = values["selection.policies"]
    if not isinstance(policies, list) or not all(p in POLICIES for p in policies):
        raise ConfigError(f"selection.policies should be a list of policies among {POLICIES} (one per round, the "
                          f"last repeating; []: selection.policy every round), got {policies!r}")
    if values["selection.control"] not in ("none", "random"):
        raise ConfigError(f"selection.control should be 'none' or 'random', got {values['selection.control']!r}")
    _check_number_list(values, "mix.source_ratios", 0.0, "[1.0, 0.0]")
    _check_number(values, "mix.source_images", 0, integer=True, hint=" (0: by mix.source_ratio)")
    tables = values["learner.round_kwargs"]
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise ConfigError("learner.round_kwargs should be a list of tables (one per round, the last repeating), "
                          f"e.g. [{{}}, {{ overrides = {{ \"train.lr\" = 1e-4 }} }}], got {tables!r}")
    for single, per_round in (("selection.policy", "selection.policies"), ("mix.source_ratio", "mix.source_ratios")):
        if single in given and per_round in given and values[per_round]:
            hint = (" (for the random control of a per-round schedule: selection.control=\"random\")"
                    if single == "selection.policy" else "")
            raise ConfigError(f"{single} and {per_round} are both given: {per_round} sets every round; give one of "
                              f"the two{hint}")


def _check_values(values: dict[str, Any], given: set[str] = frozenset()) -> None:
    if values["selection.policy"] not in POLICIES:
        raise ConfigError(f"selection.policy should be one of {POLICIES}, got {values['selection.policy']!r}")
    _check_rounds(values, given)
    if values["selection.count_classes"] not in ("auto", *GRANULARITY):
        raise ConfigError("selection.count_classes should be auto, category, supercategory or object")
    if values["mix.student_init"] not in ("teacher", "scratch"):
        raise ConfigError("mix.student_init should be 'teacher' or 'scratch'")
    thresholds = values["selection.thresholds"]
    if not isinstance(thresholds, list) or not thresholds or not all(_is_number(t) and 0 <= t <= 1 for t in thresholds):
        raise ConfigError("selection.thresholds should be a non-empty list of scores in [0, 1], e.g. "
                          f"[0.8, 0.85, 0.9, 0.95], got {thresholds!r}")
    if values["evaluate.search"] not in ("exact", "grid"):
        raise ConfigError(f"evaluate.search should be 'exact' or 'grid', got {values['evaluate.search']!r}")
    _check_number(values, "selection.target_precision", 0.0, 1.0, hint=" (0: off)")
    _check_selection(values)
    _check_number(values, "rounds", 0, 1000, integer=True)  # the CLI's --rounds bound
    _check_number(values, "seed", 0, 2**32 - 1, integer=True)
    datasets = values["source.datasets"]
    if not isinstance(datasets, list) or not all(isinstance(d, Mapping) and "instances" in d and "images" in d
                                                 for d in datasets):
        raise ConfigError("source.datasets should be a list of {instances = ..., images = ..., weight = ...} tables")
    _check_splits(values)
    if not isinstance(values["learner.kwargs"], Mapping):
        raise ConfigError("learner.kwargs should be a table of keyword arguments")
    _check_number(values, "mix.source_ratio", 0.0)


def describe_keys() -> str:
    """Every key with its default and help, for ``kd-loop run --help-config``."""
    return "\n".join(f"{key} = {default!r}\n    {text}" for key, (default, text) in SCHEMA.items())
