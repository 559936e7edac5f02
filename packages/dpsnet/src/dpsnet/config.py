"""Training configuration: every key, its default and one line of help; TOML presets; ``key=value`` overrides.

A config is a flat ``dict`` of dotted keys (``train.lr``); a TOML file writes them in tables (``[train]``,
``lr = 0.02``). Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

# (key, default, help). The default's type is the key's type; lists take TOML lists or comma-separated values.
SCHEMA: list[tuple[str, Any, str]] = [
    # model
    ("model.backbone", "small", "Backbone: small (CPU-sized CNN) or resnet18, resnet34, resnet50, resnet101."),
    ("model.backbone_weights", "", "Local weights file for the backbone body (ImageNet or `dpsnet pretrain`); empty: random."),
    ("model.fpn_channels", 0, "FPN width; 0: 64 for small, 256 for ResNets."),
    ("model.small_channels", [32, 64, 128, 256], "Stage widths of the small backbone (strides 4, 8, 16, 32)."),
    ("model.norm", "", "Backbone normalisation: batch, frozen (frozen batch norm, for small batches) or group; empty: batch for small, frozen for ResNets."),
    ("model.trainable_layers", 3, "ResNet stages left trainable (0-5)."),
    ("model.count_classes", "category", "Counting classes: category (one density map per SKU), supercategory or object."),
    ("model.min_size", [800], "Shorter image side after resizing; several values: one picked at random per training batch."),
    ("model.max_size", 1333, "Longest image side after resizing."),
    ("model.channels_last", False, "Run the backbone in channels-last memory layout (about 10% faster steps with CPU convolutions)."),
    ("model.rpn_levels", ["0", "1", "2", "3", "pool"], "Pyramid levels the RPN proposes from (\"0\"-\"3\" = P2-P5, \"pool\" = P6); the box head still pools from P2-P5."),
    ("model.anchor_sizes", [32, 64, 128, 256, 512], "RPN anchor sizes (px), split evenly over model.rpn_levels in order: one per level, or e.g. two per level with twice as many."),
    ("model.aspect_ratios", [0.5, 1.0, 2.0], "RPN anchor aspect ratios (height / width)."),
    ("model.rpn_pre_nms_top_n_train", 2000, "Proposals per level kept before NMS in training."),
    ("model.rpn_post_nms_top_n_train", 2000, "Proposals per image kept after NMS in training."),
    ("model.rpn_pre_nms_top_n_test", 1000, "Proposals per level kept before NMS at inference."),
    ("model.rpn_post_nms_top_n_test", 1000, "Proposals per image kept after NMS at inference."),
    ("model.rpn_batch_size_per_image", 256, "Anchors sampled per image for the RPN loss."),
    ("model.box_representation_size", 1024, "Width of the box head's two fully connected layers."),
    ("model.box_batch_size_per_image", 512, "Proposals sampled per image for the box head loss."),
    ("model.box_score_thresh", 0.05, "Detections below this score are dropped at inference."),
    ("model.box_agnostic_nms_thresh", 0.0, "Class-agnostic NMS IoU after the per-class one: one detection per place, the most confident SKU (look-alikes are otherwise counted twice); 0: off, as torchvision."),
    ("model.box_agnostic_nms_decay", 0.0, "Detections that class-agnostic NMS suppresses are dropped (0) or kept with their score times this (e.g. 0.01: below counting thresholds, still second hypotheses for mAP)."),
    ("model.box_detections_per_img", 100, "Most detections kept per image."),
    ("model.test_flips", "", "Test-time views fused with the plain one at inference: comma-separated among h, v, hv (hv: the image turned 180 degrees; each view costs one more forward); empty: none."),
    ("model.test_flip_iou", 0.5, "IoU at which detections of the test-time views are grouped as one object (dpsnet.detection.fuse_views)."),
    ("model.ignore_ioa", 0.5, "An anchor/proposal this much inside an ignore region (iscrowd=1) is not background."),
    ("model.roi_pool", "auto", "Box RoI pooler: auto (aco_kernels where its kernel path runs, e.g. CUDA; elsewhere the gather, or torchvision's compiled RoIAlign for an adaptive sampling ratio), aco, torchvision or gather (one gather over the pyramid, whose backward is about 5x faster than torchvision's on CPU)."),
    ("model.roi_sampling_ratio", 2, "RoIAlign samples per bin side for the box head (torchvision's 2; 1 makes a CPU step faster)."),
    ("model.count_levels", ["1", "2", "3"], "Pyramid levels fused by the counting view at model.count_stride (\"0\"-\"3\" = P2-P5, \"pool\" = P6; the released DPSNet fuses P2-P6 at stride 8)."),
    ("model.count_stride", 8, "Stride of the fused map and of the density maps, in image pixels."),
    ("model.count_channels", 64, "Width of the counting head."),
    ("model.count_convs", 2, "3x3 convolutions in the counting head."),
    ("model.count_head", "direct", "Counting head: direct (one free map per class) or factorized (a non-negative object density times per-pixel class probabilities, with a class cross-entropy)."),
    ("model.count_norm", "batch", "Normalisation in the counting head's convolutions: batch (BatchNorm before each ReLU) or none (the first versions; their ReLUs could all die, leaving a constant map)."),
    ("model.count_feature_grad", 1.0, "Scale of the counting view's gradient into the shared pyramid and backbone (1: all of it, 0: none; its own layers always learn at the full loss), so that the count losses can be weighted up without taking the pyramid over from the detector."),
    ("model.density_scale", 100.0, "The counting head predicts densities times this factor."),
    ("model.sigma_scale", 0.15, "Density Gaussian sigma = sigma_scale * the box side of model.sigma_rule (aco_kernels' rule), at least 1 map pixel."),
    ("model.sigma_rule", "area", "Box side that sets the density Gaussian's sigma: area (sqrt(w * h)) or short_side (min(w, h): the released DPSNet's rule, with model.sigma_scale = 5/24)."),
    ("model.density_loss_weight", 1.0, "Weight of the per-pixel density loss."),
    ("model.count_loss_weight", 1.0, "Weight of the count loss on the density integrals."),
    ("model.class_loss_weight", 1.0, "Weight of the factorized counting head's per-pixel class cross-entropy."),
    # data
    ("data.train_instances", [""], "Training instances JSON files (one or several, mixed)."),
    ("data.train_images", [""], "Image folder of each training JSON, in the same order."),
    ("data.train_ratios", [0.0], "Sampling ratio of each training JSON; [0.0]: in proportion to their sizes."),
    ("data.val_instances", "", "Validation instances JSON for periodic evaluation; empty: none."),
    ("data.val_images", "", "Image folder of the validation JSON."),
    ("data.train_distill", [True], "Per training JSON, whether soft distillation applies to its images (true for pseudo-labelled sets); one value: all of them."),
    ("data.epoch_size", 0, "Samples per epoch over all datasets; 0: the sum of their sizes."),
    ("data.hflip", 0.5, "Probability of a horizontal flip."),
    ("data.vflip", 0.5, "Probability of a vertical flip (checkout images are seen from above)."),
    ("data.scale_min", 1.0, "Scale jitter: smallest resize factor applied before the model's own resizing."),
    ("data.scale_max", 1.0, "Scale jitter: largest resize factor."),
    ("data.brightness", 0.0, "Colour jitter: brightness factor range 1 +- this."),
    ("data.contrast", 0.0, "Colour jitter: contrast factor range 1 +- this."),
    ("data.saturation", 0.0, "Colour jitter: saturation factor range 1 +- this."),
    ("data.camera", 0.0, "Share of training images that also get camera effects (colour cast, blur, noise, JPEG; dpsnet.data.camera_effects)."),
    ("data.min_box_size", 1.0, "Boxes narrower or lower than this (px, after augmentation) are dropped."),
    ("data.num_workers", 0, "DataLoader worker processes per training process."),
    # train
    ("train.seed", 0, "Random seed (weights, sampling, augmentation)."),
    ("train.device", "auto", "auto (CUDA when available), cpu or cuda[:N]; under torchrun each rank uses its local GPU."),
    ("train.distill_weight", 0.0, "Weight of soft distillation (the box classifier matches a teacher's class distributions through aco_kernels.kd_loss); 0: off."),
    ("train.distill_checkpoint", "", "The teacher of soft distillation; empty: train.init_checkpoint."),
    ("train.distill_temperature", 2.0, "Softmax temperature of soft distillation."),
    ("train.trainable", "all", "What trains: all, or counting (the counting view alone on the frozen rest of the model, e.g. a short refinement of the counter from train.init_checkpoint: each step costs about a third of a full one)."),
    ("train.init_checkpoint", "", "A DPSNet checkpoint whose model weights start the run (a student from its teacher); empty: none."),
    ("train.threads", 0, "CPU threads per process (torch.set_num_threads); 0: torch's default. 1 is fastest on a shared, busy CPU."),
    ("train.batch_size", 2, "Images per step per process."),
    ("train.reference_batch", 0, "When > 0: train.lr, train.max_steps, train.lr_steps and train.warmup_steps are given for this total batch (images per step over all processes), and the run scales them to its own total (train.batch_size x processes) by the linear rule, lr x total / reference, steps x reference / total (logged at the start): the schedule per image does not depend on the number of GPUs. 0: used as given."),
    ("train.max_steps", 1000, "Optimiser steps of the whole run."),
    ("train.time_limit_min", 0.0, "Stop (and save) after this many minutes of training; 0: no limit."),
    ("train.optimizer", "sgd", "sgd or adamw."),
    ("train.lr", 0.02, "Peak learning rate."),
    ("train.momentum", 0.9, "SGD momentum (AdamW: beta1)."),
    ("train.weight_decay", 1e-4, "Weight decay."),
    ("train.schedule", "step", "Learning-rate schedule after warmup: step, cosine or constant (the peak lr throughout, e.g. one round of a longer schedule)."),
    ("train.warmup_steps", 500, "Linear warmup steps."),
    ("train.warmup_factor", 0.001, "Learning-rate factor at the first warmup step."),
    ("train.lr_steps", [0], "Step schedule: steps where the lr is multiplied by lr_gamma; [0]: at 2/3 and 8/9 of max_steps."),
    ("train.lr_gamma", 0.1, "Step schedule: the factor."),
    ("train.clip_grad_norm", 0.0, "Clip the gradient norm to this; 0: no clipping."),
    ("train.amp", True, "Mixed precision (bfloat16 autocast, boxes decoded in float32) where the device computes bfloat16 natively: CUDA GPUs, and CPUs with AMX units (Intel Xeon 4th generation and newer: about 1.3x faster steps) or AVX512-BF16 (AMD Zen 4 and newer: about 1.4x); ignored elsewhere."),
    ("train.log_every", 20, "Steps between log lines (log.txt and log.jsonl)."),
    ("train.checkpoint_every", 500, "Steps between checkpoints (last.pt); one is always written at the end."),
    ("train.eval_every", 0, "Steps between validation evaluations; 0: only at the end (when a val set is given)."),
    ("train.eval_metric", "map50", "Validation metric choosing best.pt: map50, cacc (oracle threshold) or count_acc (counting view)."),
    ("train.eval_batch_size", 4, "Images per batch at evaluation."),
]

DEFAULTS: dict[str, Any] = {key: default for key, default, _ in SCHEMA}
CHOICES: dict[str, tuple[str, ...]] = {
    "model.backbone": ("small", "resnet18", "resnet34", "resnet50", "resnet101"),
    "model.norm": ("", "batch", "frozen", "group"),
    "model.count_classes": ("category", "supercategory", "object"),
    "model.count_head": ("direct", "factorized"),
    "model.count_norm": ("batch", "none"),
    "model.sigma_rule": ("area", "short_side"),
    "model.roi_pool": ("auto", "aco", "torchvision", "gather"),
    "train.optimizer": ("sgd", "adamw"),
    "train.schedule": ("step", "cosine", "constant"),
    "train.eval_metric": ("map50", "cacc", "count_acc"),
    "train.trainable": ("all", "counting"),
}
HELP: dict[str, str] = {key: text for key, _, text in SCHEMA}
# Keys added after checkpoints existed, with the value that a saved config without them was trained with
# (`make_config` of a saved config and `dpsnet.inference.model_from_checkpoint` apply them).
LEGACY: dict[str, Any] = {"model.count_norm": "none"}
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


def flatten(table: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def load_toml(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A preset's or TOML file's flat values and its name; a missing file raises ``FileNotFoundError``."""
    if name_or_path in PRESETS:
        text = resources.files("dpsnet").joinpath("presets", f"{name_or_path}.toml").read_text(encoding="utf-8")
        return flatten(tomllib.loads(text)), f"preset {name_or_path}"
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (presets: {', '.join(PRESETS)})")
    try:
        return flatten(tomllib.loads(path.read_text(encoding="utf-8"))), str(path)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: malformed TOML ({err})") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` -> ``("train.lr", 0.01)``; the value is read as TOML when it parses, else as text."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} should be key=value; valid keys: {valid_keys_text()}")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def make_config(base: str | Mapping[str, Any] | None = None,
                overrides: Iterable[str] | Mapping[str, Any] = ()) -> dict[str, Any]:
    """Defaults, then ``base`` (a preset name, a TOML file or a saved flat config such as a checkpoint's), then
    ``overrides`` (``key=value`` strings or a dict)."""
    config = dict(DEFAULTS)
    if base:
        values, source = (dict(base), "saved config") if isinstance(base, Mapping) else load_toml(base)
        if isinstance(base, Mapping):
            config.update({key: value for key, value in LEGACY.items() if key not in values})
        for key, value in values.items():
            _check_key(key, source)
            config[key] = _coerce(key, value, source)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        _check_key(key, "command line")
        config[key] = _coerce(key, value, "command line")
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise ConfigError(f"{key} should be one of {', '.join(repr(c) for c in choices)}, got {config[key]!r}")
    return config


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
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines).lstrip() + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


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
