"""The ranges of the config's numeric values, checked once the config is assembled: every number finite and
non-negative, the keys below positive or at most 1, and ``train.device`` a device torch knows. A value out of
range is an error naming the key, before anything is loaded or written."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

# Keys whose values (each item of a list) must be > 0: sizes, counts, divisors and rates.
POSITIVE = frozenset({
    "model.small_channels", "model.min_size", "model.max_size", "model.anchor_sizes", "model.aspect_ratios",
    "model.rpn_pre_nms_top_n_train", "model.rpn_post_nms_top_n_train", "model.rpn_pre_nms_top_n_test",
    "model.rpn_post_nms_top_n_test", "model.rpn_batch_size_per_image", "model.box_representation_size",
    "model.box_batch_size_per_image", "model.box_detections_per_img", "model.count_stride",
    "model.count_channels", "model.density_scale", "model.sigma_scale", "train.batch_size", "train.max_steps",
    "train.log_every", "train.checkpoint_every", "train.eval_batch_size", "train.distill_temperature",
})
# Keys holding a share, a probability or an IoU: at most 1.
AT_MOST_ONE = frozenset({
    "model.box_score_thresh", "model.box_agnostic_nms_thresh", "model.test_flip_iou", "model.ignore_ioa",
    "data.hflip", "data.vflip", "train.momentum",
})
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE_HELP = "auto, cpu, mps, cuda or cuda:N"


def device_problem(device: Any) -> str | None:
    """Why ``device`` is not a device name dpsnet runs on (None when it is)."""
    if isinstance(device, str) and DEVICE.fullmatch(device.strip()):
        return None
    return f"{device!r} is not a device; use {DEVICE_HELP}"


def _number_problem(key: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # the types were coerced before: a bool or text key
    if not math.isfinite(value):
        return "should be a finite number"
    if value < 0 or (value == 0 and key in POSITIVE):
        return "should be > 0" if key in POSITIVE else "should be >= 0"
    if key in AT_MOST_ONE and value > 1:
        return "should be at most 1"
    return None


def range_problem(config: Mapping[str, Any]) -> str | None:
    """What is wrong with the first key whose value (or list item) is out of range, naming it; None when all fit."""
    for key, value in config.items():
        for item in value if isinstance(value, list) else [value]:
            problem = _number_problem(key, item)
            if problem:
                return f"{key} {problem}, got {value!r}; fix it in the config or as {key}=VALUE"
    problem = device_problem(config.get("train.device", "auto"))
    return f"train.device: {problem}" if problem else None
