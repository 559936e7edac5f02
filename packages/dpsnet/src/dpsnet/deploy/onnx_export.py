"""ONNX export of a bundle's network, through ``torch.onnx.export`` (the TorchScript-based exporter,
``dynamo=False``) with aco_kernels forced onto its torch references (Triton ops do not go into ONNX).

An exported folder holds ``bundle.pt`` (the bundle: categories, threshold, settings, re-scorer), two graphs and
``onnx.json`` (what is where):

- ``pyramid.onnx``: the normalised, padded batch ``images [B, 3, H, W]`` (any B, H, W) -> the backbone and FPN's
  levels ``feat_0``-``feat_3``, ``feat_pool``, the RPN head's ``objectness_<level>`` and ``deltas_<level>`` per
  RPN level, and the counting view's ``density [B, C, H/stride, W/stride]`` (pyramid fusion, head, predictor).
- ``box_head.onnx``: RoI features ``rois [N, C, 7, 7]`` -> the box head's ``class_logits`` and ``box_regression``.

Everything else runs in Python (:mod:`dpsnet.deploy.onnx_runner`), the same code as :class:`dpsnet.Counter`:
resizing and normalisation, anchors, proposal decoding and NMS, multi-scale RoIAlign, box decoding, per-class NMS,
the crop re-scorer (torch), the class-agnostic NMS, test-time flips and their fusion, and the counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import aco_kernels
from aco_kernels.reference import pyramid_fuse_reference
from rpc_metrics.files import write_json

from ..model import PYRAMID_LEVELS, DPSNet
from .bundle import BUNDLE_FILE, bundle_model, write_bundle

OPSET = 17
EXPORTER = "torch.onnx.export (TorchScript-based exporter, dynamo=False)"
PYRAMID_FILE, BOX_HEAD_FILE, MANIFEST_FILE = "pyramid.onnx", "box_head.onnx", "onnx.json"


class PyramidGraph(nn.Module):
    """The part of :class:`DPSNet` that ``pyramid.onnx`` holds (see the module docstring)."""

    def __init__(self, model: DPSNet):
        super().__init__()
        self.backbone, self.rpn_head, self.counting_view = model.backbone, model.rpn.head, model.counting_view
        self.rpn_levels = model.rpn_levels

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features = self.backbone(images)
        objectness, deltas = self.rpn_head([features[lv] for lv in self.rpn_levels])
        return (*(features[lv] for lv in PYRAMID_LEVELS), *objectness, *deltas, self.density(features, images))

    def density(self, features: dict[str, Tensor], images: Tensor) -> Tensor:
        """:meth:`dpsnet.counting.CountingView.forward` in eval, its fusion through aco_kernels' torch reference
        called with the traced map size (``aco_kernels.pyramid_fuse`` takes the size as Python ints, which the
        tracer would freeze at the example's size)."""
        view = self.counting_view
        size = ((images.shape[-2] + view.stride - 1) // view.stride, (images.shape[-1] + view.stride - 1) // view.stride)
        projected = [proj(features[key].float()) for proj, key in zip(view.projections, view.levels, strict=True)]
        fused = pyramid_fuse_reference(projected, size, [1.0] * len(projected))
        return view.predictor(view.convs(fused))


class BoxHeadGraph(nn.Module):
    """The box head and predictor that ``box_head.onnx`` holds."""

    def __init__(self, model: DPSNet):
        super().__init__()
        self.box_head, self.box_predictor = model.roi_heads.box_head, model.roi_heads.box_predictor

    def forward(self, rois: Tensor) -> tuple[Tensor, Tensor]:
        return self.box_predictor(self.box_head(rois))


def pyramid_names(rpn_levels: tuple[str, ...]) -> list[str]:
    """The output names of ``pyramid.onnx``, in order."""
    return ([f"feat_{lv}" for lv in PYRAMID_LEVELS] + [f"objectness_{lv}" for lv in rpn_levels]
            + [f"deltas_{lv}" for lv in rpn_levels] + ["density"])


def _export(module: nn.Module, example: Tensor, path: Path, input_name: str, outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    with torch.no_grad(), aco_kernels.dispatch_mode("reference"), warnings.catch_warnings():
        # the legacy exporter's deprecation notice and the tracer's notes on shape arithmetic (checked by a test)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=outputs, dynamic_axes=dynamic,
                          do_constant_folding=True)


def export_onnx(bundle: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir`` (the bundle, ``pyramid.onnx``, ``box_head.onnx``, ``onnx.json``) and check both graphs
    with ``onnx.checker``. The example input is the bundle's input size."""
    import onnx

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file; --format onnx writes a folder")
    out.mkdir(parents=True, exist_ok=True)
    model, _, _ = bundle_model(bundle, "cpu")
    model = model.float().eval()
    size = int(model.transform.max_size)
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    names = pyramid_names(model.rpn_levels)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in names})
    _export(PyramidGraph(model).eval(), example, out / PYRAMID_FILE, "images", names, dynamic)
    channels = model.backbone.out_channels
    rois = torch.rand(3, channels, 7, 7, generator=torch.Generator().manual_seed(1))
    _export(BoxHeadGraph(model).eval(), rois, out / BOX_HEAD_FILE, "rois", ["class_logits", "box_regression"],
            {"rois": {0: "rois"}, "class_logits": {0: "rois"}, "box_regression": {0: "rois"}})
    for name in (PYRAMID_FILE, BOX_HEAD_FILE):
        onnx.checker.check_model(onnx.load(str(out / name)))
    write_bundle(bundle, out / BUNDLE_FILE)
    write_json({"exporter": EXPORTER, "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__,
                "aco_kernels": "reference path forced while exporting",
                "graphs": {PYRAMID_FILE: {"inputs": ["images"], "outputs": names},
                           BOX_HEAD_FILE: {"inputs": ["rois"], "outputs": ["class_logits", "box_regression"]}},
                "in_python": ["resize and normalise (GeneralizedRCNNTransform)", "anchors", "proposal decoding and NMS",
                              "multi-scale RoIAlign", "box decoding and per-class NMS", "crop re-scorer (torch)",
                              "class-agnostic NMS", "test-time flips and fusion", "counts (density integrals)"]},
               out / MANIFEST_FILE, indent=2)
    return out
