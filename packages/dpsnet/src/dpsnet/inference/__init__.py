"""Inference: predict a pool (COCO results + counts file), re-score detections by the crop classifier, draw them.

Nothing here imports training code (a test walks the imports). The names below are the public API; the
checkpoint and device helpers are re-exported from their own modules for existing callers.
"""

from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..device import cpu_bf16_units, native_bf16, resolve_device
from .prediction import (
    counts_entry,
    detections_to_results,
    predict,
    predict_files,
    predict_overrides,
    run_model,
)
from .rescore import CropRescorer, crop_accuracy, crop_boxes
from .visualize import draw, visualize_files

__all__ = [
    "CropRescorer", "counts_entry", "cpu_bf16_units", "crop_accuracy",
    "crop_boxes", "detections_to_results", "draw", "load_checkpoint", "model_from_checkpoint", "native_bf16",
    "predict", "predict_files", "predict_overrides", "resolve_device", "run_model", "visualize_files",
]
