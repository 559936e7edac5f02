"""The onnxruntime runner of an exported folder (``dpsnet export --format onnx``): :class:`OnnxCounter`, a
:class:`dpsnet.Counter` whose network runs in onnxruntime.

The bundle's model is built as usual for its glue (resizing, anchors, proposals, RoIAlign, NMS, re-scoring, flips,
counts: see :mod:`dpsnet.deploy.onnx_export`), then its backbone, RPN head, counting view and box head are
replaced by modules that call the two ONNX graphs; receipts come from the same code as the Counter's.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..model import PYRAMID_LEVELS, DPSNet
from .bundle import read_bundle
from .counter import Counter
from .onnx_export import BOX_HEAD_FILE, PYRAMID_FILE, pyramid_names


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, name: str, x: Tensor) -> list[Tensor]:
    outputs = session.run(None, {name: np.ascontiguousarray(x.detach().float().cpu().numpy())})
    return [torch.from_numpy(o).to(x.device) for o in outputs]


class _Cache:
    """What one ``pyramid.onnx`` call returned besides the features, for the RPN head and the counting view."""

    objectness: list[Tensor]
    deltas: list[Tensor]
    density: Tensor


class OrtPyramid(nn.Module):
    """Stands in for the backbone: runs ``pyramid.onnx``, returns the levels and keeps the rest in the cache."""

    def __init__(self, session, rpn_levels: tuple[str, ...], out_channels: int, cache: _Cache):
        super().__init__()
        self.session, self.rpn_levels, self.out_channels, self.cache = session, rpn_levels, out_channels, cache
        self.names = pyramid_names(rpn_levels)

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        out = dict(zip(self.names, _run(self.session, "images", images), strict=True))
        self.cache.objectness = [out[f"objectness_{lv}"] for lv in self.rpn_levels]
        self.cache.deltas = [out[f"deltas_{lv}"] for lv in self.rpn_levels]
        self.cache.density = out["density"]
        return OrderedDict((lv, out[f"feat_{lv}"]) for lv in PYRAMID_LEVELS)


class CachedRPNHead(nn.Module):
    """Stands in for the RPN head: the objectness and box deltas ``pyramid.onnx`` computed."""

    def __init__(self, cache: _Cache):
        super().__init__()
        self.cache = cache

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.cache.objectness, self.cache.deltas


class CachedCountingView(nn.Module):
    """Stands in for the counting view: the density maps ``pyramid.onnx`` computed (same stride and levels)."""

    def __init__(self, cache: _Cache, stride: int, levels: tuple[str, ...]):
        super().__init__()
        self.cache, self.stride, self.levels = cache, stride, levels

    def forward(self, features, padded_size) -> Tensor:
        return self.cache.density


class OrtBoxHead(nn.Module):
    """Stands in for the box predictor (the box head becomes an identity): runs ``box_head.onnx``."""

    def __init__(self, session, num_classes: int):
        super().__init__()
        self.session, self.num_classes = session, num_classes

    def forward(self, rois: Tensor) -> tuple[Tensor, Tensor]:
        if len(rois) == 0:
            return rois.new_zeros(0, self.num_classes), rois.new_zeros(0, 4 * self.num_classes)
        logits, regression = _run(self.session, "rois", rois)
        return logits, regression


def use_onnx(model: DPSNet, folder: str | Path, threads: int | None = None) -> DPSNet:
    """Replace ``model``'s network by the folder's ONNX graphs (in place; CPU, float32)."""
    folder = Path(folder)
    cache = _Cache()
    pyramid, box = _session(folder / PYRAMID_FILE, threads), _session(folder / BOX_HEAD_FILE, threads)
    num_classes = model.roi_heads.box_predictor.cls_score.out_features
    model.backbone = OrtPyramid(pyramid, model.rpn_levels, model.backbone.out_channels, cache)
    model.rpn.head = CachedRPNHead(cache)
    model.counting_view = CachedCountingView(cache, model.counting_view.stride, model.counting_view.levels)
    model.roi_heads.box_head = nn.Identity()
    model.roi_heads.box_predictor = OrtBoxHead(box, num_classes)
    model.channels_last = False
    return model.eval()


class OnnxCounter(Counter):
    """``OnnxCounter.load(folder, threads=None)``: receipts as :class:`dpsnet.Counter` gives them, the network in
    onnxruntime (CPU). ``threads``: onnxruntime's intra-op threads (None: its default)."""

    def __init__(self, bundle, folder: str | Path, *, threads: int | None = None, batch_size: int = 4):
        super().__init__(bundle, "cpu", amp=False, batch_size=batch_size)
        self.folder = Path(folder)
        use_onnx(self.model, self.folder, threads)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs) -> OnnxCounter:
        if str(device) != "cpu":
            raise ValueError(f"the onnxruntime runner computes on the CPU, got device {device}")
        return cls(read_bundle(path), path, **kwargs)
