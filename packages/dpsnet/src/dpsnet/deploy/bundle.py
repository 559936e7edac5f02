"""The deployment bundle: one ``.pt`` file holding everything ``dpsnet predict`` used to detect and count, and
nothing for training (no optimizer, scheduler or RNG state). It loads with ``torch.load(weights_only=True)``.

Keys: ``format`` (``"dpsnet-bundle"``), ``version``, ``model`` (the state dict), ``model_kwargs`` (the model's
keyword arguments with predict's options applied: flips, NMS, score floor, input size, normalisation),
``categories`` (:meth:`dpsnet.data.CategoryMap.to_dict`: ids, names, counting classes), ``config`` (the
training config, for the record), ``threshold`` and ``protocol`` (the operating score threshold and the
protocol that chose it), ``reclassifier`` (``None`` or ``{"state": the dpsnet pretrain file's content,
"power"}``: the crop re-scorer and its pair specialists), ``preprocessing`` and ``postprocessing`` (readable
summaries of what ``model_kwargs`` sets), ``precision`` (``float32``) and ``source`` (the checkpoint's path).
A bundle is also a checkpoint for :func:`dpsnet.checkpoint.model_from_checkpoint`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..backbone import load_torch_file
from ..checkpoint import current_model_kwargs, load_checkpoint, model_from_checkpoint, save_checkpoint
from ..classifier import PRETRAIN_HINT, crop_classifier_from_state
from ..data import CategoryMap
from ..inference.prediction import predict_overrides
from ..inference.rescore import CropRescorer
from ..model import DPSNet

BUNDLE_FORMAT = "dpsnet-bundle"
BUNDLE_VERSION = 1
BUNDLE_FILE = "bundle.pt"  # the bundle's name inside an exported folder (``dpsnet export --format onnx``)


def _summaries(kwargs: Mapping[str, Any]) -> tuple[dict, dict]:
    """What the model's keyword arguments set for preprocessing and post-processing, spelled out."""
    pre = {"reader": "cv2.imdecode(IMREAD_COLOR) -> RGB float32 / 255 (dpsnet.data.read_image)",
           "min_size": kwargs.get("min_size", 800), "max_size": kwargs.get("max_size", 1333),
           "image_mean": list(kwargs.get("image_mean", (0.485, 0.456, 0.406))),
           "image_std": list(kwargs.get("image_std", (0.229, 0.224, 0.225))),
           "resize": "torchvision GeneralizedRCNNTransform (bilinear), batch padded to a multiple of 32"}
    post = {"box_score_thresh": kwargs.get("box_score_thresh", 0.05),
            "box_nms_thresh": kwargs.get("box_nms_thresh", 0.5),
            "box_agnostic_nms_thresh": kwargs.get("box_agnostic_nms_thresh", 0.0),
            "box_agnostic_nms_decay": kwargs.get("box_agnostic_nms_decay", 0.0),
            "box_detections_per_img": kwargs.get("box_detections_per_img", 100),
            "test_flips": kwargs.get("test_flips", ""), "test_flip_iou": kwargs.get("test_flip_iou", 0.5)}
    return pre, post


def make_bundle(checkpoint: str | Path, threshold: float, *, protocol: str = "fixed",
                score_thresh: float | None = None, agnostic_nms: float | None = None,
                test_flips: str | None = None, test_flip_iou: float | None = None,
                reclassifier: str | Path | None = None, reclassifier_power: float = 0.5) -> dict:
    """The bundle of a ``dpsnet train`` checkpoint with ``dpsnet predict``'s options (same names, same meaning)
    and the operating ``threshold`` chosen by ``protocol`` (e.g. ``transfer``: on the val split)."""
    if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold should be a score in [0, 1], got {threshold}")
    source = str(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    overrides = predict_overrides(score_thresh, agnostic_nms, test_flips, test_flip_iou)
    model, categories = model_from_checkpoint(ckpt, "cpu", **overrides)  # checks the options and the weights
    kwargs = {**current_model_kwargs(ckpt["model_kwargs"], source), "backbone_weights": None, **overrides}
    # The floor applies before re-scoring, which lowers scores: only without a re-scorer is a lower threshold void.
    if reclassifier is None and kwargs.get("box_score_thresh", 0.05) > threshold:
        raise ValueError(f"--threshold {threshold} is below the model's score floor {kwargs['box_score_thresh']} "
                         "(pass a lower --score-thresh)")
    rescorer = None
    if reclassifier is not None:
        path = Path(reclassifier)
        if not path.is_file():
            raise FileNotFoundError(f"reclassifier file not found: {path}")
        state = load_torch_file(path, "dpsnet pretrain file", PRETRAIN_HINT)
        state.pop("summary", None)
        _rescorer({"state": state, "power": reclassifier_power}, categories, str(path))  # checks it
        rescorer = {"state": state, "power": float(reclassifier_power), "source": str(path)}
    pre, post = _summaries(kwargs)
    return {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "model": model.state_dict(),
            "model_kwargs": kwargs, "categories": categories.to_dict(), "config": ckpt.get("config", {}),
            "threshold": float(threshold), "protocol": str(protocol), "reclassifier": rescorer,
            "preprocessing": pre, "postprocessing": post, "precision": "float32", "source": source}


def write_bundle(bundle: Mapping[str, Any], path: str | Path) -> Path:
    """Write a bundle atomically (a killed writer leaves no half-written file)."""
    return save_checkpoint(bundle, path)


def read_bundle(path: str | Path) -> dict:
    """A bundle file (or a folder holding ``bundle.pt``), loaded with ``weights_only=True``. A missing file
    raises ``FileNotFoundError``, a file that is not a bundle ``ValueError``, each naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model bundle not found: {path}")
    bundle = load_torch_file(path, "dpsnet bundle", "write one with `dpsnet export --format bundle`")
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not a dpsnet bundle (write one with `dpsnet export --format bundle`)")
    if bundle.get("version") != BUNDLE_VERSION:
        raise ValueError(f"{path}: bundle version {bundle.get('version')}, this dpsnet reads {BUNDLE_VERSION}")
    bundle["path"] = str(path)
    return bundle


def _rescorer(entry: Mapping[str, Any], categories: CategoryMap, source: str) -> CropRescorer:
    saved = crop_classifier_from_state(dict(entry["state"]), source)
    return CropRescorer.from_saved(saved, categories.category_ids, source=source, power=float(entry["power"]))


def bundle_model(bundle: Mapping[str, Any], device: str | torch.device = "cpu"
                 ) -> tuple[DPSNet, CategoryMap, CropRescorer | None]:
    """The bundle's model (eval mode), category map and re-scorer (or None), on ``device``."""
    source = str(bundle.get("path", "bundle"))
    try:
        model, categories = model_from_checkpoint(bundle, device)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{source}: a damaged bundle ({type(err).__name__}: {err})") from None
    entry = bundle.get("reclassifier")
    rescorer = _rescorer(entry, categories, source).to(device).eval() if entry else None
    return model, categories, rescorer
