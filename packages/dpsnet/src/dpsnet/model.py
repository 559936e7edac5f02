"""DPSNet, the model: Faster R-CNN + FPN (detection view) whose pyramid also feeds a density-map counting view.

Everything a caller needs comes through ``forward``'s arguments and return value: a re-scorer to apply between the
per-class and the class-agnostic NMS (``rescore``), the density maps (``return_density``), and in training what
soft distillation needs (``return_box_logits``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .backbone import build_backbone
from .counting import CountingView, crop_counts, density_loss, density_targets, ignore_mask
from .detection import (
    BoxHeadOutput,
    IgnoreAwareRoIHeads,
    IgnoreAwareRPN,
    KernelRoIPool,
    agnostic_nms,
    fuse_views,
)


def _float32_outputs(module: nn.Module, args, output):
    """Forward hook: floating outputs of a head returned in float32 (nested lists and tuples too).

    Under bfloat16 autocast the RPN head (like the box predictor) gives bfloat16 box deltas, and torchvision's
    ``BoxCoder.decode`` converts the anchors or proposals to the deltas' dtype before decoding: bfloat16 has 8
    significant bits, so boxes would come out on a 2-pixel grid at 256-512 px and an 8-pixel grid at
    1024-2048 px. In float32 the heads' outputs decode (and their losses compute) at full precision."""
    if isinstance(output, Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_float32_outputs(module, args, o) for o in output)
    return output


def split_ignore(targets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Targets with ``iscrowd`` boxes moved from ``boxes``/``labels`` to ``ignore_boxes`` (Tensor[M, 4])."""
    out = []
    for t in targets:
        crowd = t["iscrowd"].bool() if "iscrowd" in t else torch.zeros_like(t["labels"], dtype=torch.bool)
        out.append({"boxes": t["boxes"][~crowd], "labels": t["labels"][~crowd], "ignore_boxes": t["boxes"][crowd]})
    return out


PYRAMID_LEVELS = ("0", "1", "2", "3", "pool")  # P2-P5 and the max-pooled P6, as every backbone returns them
TEST_FLIPS = {"h": (-1,), "v": (-2,), "hv": (-2, -1)}  # test-time views: image dims flipped (hv: a 180-degree turn)


def parse_test_flips(flips: str | Sequence[str]) -> tuple[str, ...]:
    """``"h,hv"`` or ``["h", "hv"]`` -> ``("h", "hv")``; empty: no test-time flips."""
    names = flips.split(",") if isinstance(flips, str) else list(flips)
    names = [str(n).strip() for n in names if str(n).strip()]
    if any(n not in TEST_FLIPS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"test_flips should be distinct names among {sorted(TEST_FLIPS)} (empty: none), "
                         f"got {flips!r}")
    return tuple(names)


def _pyramid_levels(levels: Sequence[str], name: str) -> tuple[str, ...]:
    """``levels`` as distinct pyramid keys among :data:`PYRAMID_LEVELS`; a clear error naming ``name`` otherwise."""
    out = tuple(str(lv) for lv in levels)
    if not out or len(set(out)) != len(out) or set(out) - set(PYRAMID_LEVELS):
        raise ValueError(f"{name} should be distinct pyramid levels among {PYRAMID_LEVELS}, got {list(levels)}")
    return out


def _count_class_map(count_class_of_label: Sequence[int] | None, num_classes: int,
                     num_count_classes: int | None) -> tuple[list[int], int]:
    """The counting class of each detection label (default: label ``l`` counts as class ``l - 1``) and the number
    of counting classes, checked once here so that a training step renders its targets without a range check."""
    mapping = [0, *range(num_classes - 1)] if count_class_of_label is None else list(count_class_of_label)
    if len(mapping) != num_classes:
        raise ValueError(f"count_class_of_label should have num_classes={num_classes} entries, got {len(mapping)}")
    num_count_classes = num_count_classes or max(mapping) + 1
    if min(mapping) < 0 or max(mapping) >= num_count_classes:
        raise ValueError(f"count_class_of_label should be in [0, num_count_classes={num_count_classes}), got "
                         f"[{min(mapping)}, {max(mapping)}]")
    return mapping, num_count_classes


def _region_proposal_network(channels: int, levels: tuple[str, ...], anchor_sizes: Sequence[int],
                             aspect_ratios: Sequence[float], *, batch_size_per_image: int, pre_nms_top_n: dict,
                             post_nms_top_n: dict, nms_thresh: float, ignore_ioa: float) -> IgnoreAwareRPN:
    """torchvision's RPN on ``levels`` with ``anchor_sizes`` split evenly over them, in order."""
    if len(anchor_sizes) % len(levels):
        raise ValueError(f"anchor_sizes ({len(anchor_sizes)} sizes) should split evenly over the "
                         f"{len(levels)} rpn_levels {list(levels)}")
    per_level = len(anchor_sizes) // len(levels)
    anchors = AnchorGenerator(
        tuple(tuple(anchor_sizes[i * per_level:(i + 1) * per_level]) for i in range(len(levels))),
        (tuple(aspect_ratios),) * len(levels))
    return IgnoreAwareRPN(anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]), 0.7, 0.3,
                          batch_size_per_image, 0.5, pre_nms_top_n, post_nms_top_n, nms_thresh, ignore_ioa=ignore_ioa)


class DPSNet(nn.Module):
    """Detector and counter sharing one feature pyramid.

    ``model(images, targets)`` takes ``images (list[Tensor[3, H, W]])`` in [0, 1] and, in training, ``targets``
    with ``boxes (Tensor[K, 4])`` in (x1, y1, x2, y2) image pixels, ``labels (Tensor[K] int64)`` in
    ``[1, num_classes)`` and optionally ``iscrowd (Tensor[K])`` (ignore regions); it returns a dict of losses
    (with ``return_box_logits=True``: ``(losses, BoxHeadOutput)``, the batch, sampled proposals and their class
    logits, for soft distillation). In eval it returns one dict per image: ``boxes``, ``labels``, ``scores`` and
    ``counts (Tensor[C])``, the integral of each counting class's density map (plus ``density (Tensor[C, h, w])``
    with ``return_density=True``). ``rescore(images, boxes, scores, labels, image_sizes) -> scores`` (e.g.
    :class:`dpsnet.inference.CropRescorer`) re-scores each image's detections between the per-class and the
    class-agnostic NMS; ``images`` is the resized batch in [0, 1], boxes in its coordinates.

    With ``test_flips`` (e.g. ``"hv"``), eval also runs each image flipped (``h``, ``v`` or ``hv``, a checkout
    camera's view being symmetric), maps the detections back and fuses them with
    :func:`dpsnet.detection.fuse_views` at IoU ``test_flip_iou``; counts and density maps are the views' means.

    Args:
        backbone: a module mapping images to an ``OrderedDict`` of pyramid levels ``"0"``-``"3"``, ``"pool"``
            with attribute ``out_channels`` (see :func:`dpsnet.backbone.build_backbone`).
        num_classes: detection classes including background (SKUs + 1).
        count_class_of_label: counting class index for each detection label (index 0, background, unused);
            default: label ``l`` counts as class ``l - 1`` (one density map per SKU).
        num_count_classes: number of density maps (default ``max(count_class_of_label) + 1``).
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, count_class_of_label: Sequence[int] | None = None,
        num_count_classes: int | None = None, *,
        # input transform
        channels_last: bool = False, min_size: int | tuple[int, ...] = 800, max_size: int = 1333,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406), image_std: Sequence[float] = (0.229, 0.224, 0.225),
        # RPN
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512), aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_levels: Sequence[str] = ("0", "1", "2", "3", "pool"),
        rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7, rpn_batch_size_per_image: int = 256,
        # box head
        box_representation_size: int = 1024, box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5,
        box_agnostic_nms_thresh: float = 0.0, box_agnostic_nms_decay: float = 0.0,
        box_detections_per_img: int = 100, box_batch_size_per_image: int = 512,
        test_flips: str | Sequence[str] = "", test_flip_iou: float = 0.5, ignore_ioa: float = 0.5,
        roi_pool: str = "auto", roi_sampling_ratio: int = 2,
        # counting view
        count_levels: Sequence[str] = ("1", "2", "3"), count_stride: int = 8, count_channels: int = 64,
        count_convs: int = 2, count_feature_grad: float = 1.0, density_scale: float = 100.0,
        sigma_scale: float = 0.15, sigma_rule: str = "area", min_sigma: float = 1.0,
        density_loss_weight: float = 1.0, count_loss_weight: float = 1.0,
    ):
        super().__init__()
        mapping, num_count_classes = _count_class_map(count_class_of_label, num_classes, num_count_classes)
        self.register_buffer("count_class_of_label", torch.as_tensor(mapping, dtype=torch.int64))
        self.num_count_classes = num_count_classes
        if sigma_rule not in ("area", "short_side"):
            raise ValueError(f"sigma_rule should be 'area' or 'short_side', got {sigma_rule!r}")
        self.density_scale, self.sigma_scale, self.sigma_rule, self.min_sigma = (
            density_scale, sigma_scale, sigma_rule, min_sigma)
        self.density_loss_weight, self.count_loss_weight = density_loss_weight, count_loss_weight
        self.counting_only = False  # train_counting_only() sets it
        self._requires_grad_before: dict[str, bool] = {}
        self.test_flips = parse_test_flips(test_flips)
        if not 0.0 < test_flip_iou <= 1.0:
            raise ValueError(f"test_flip_iou should be in (0, 1], got {test_flip_iou}")
        if not 0.0 <= box_agnostic_nms_thresh <= 1.0:
            raise ValueError(f"agnostic_nms_thresh should be in [0, 1] (0: off), got {box_agnostic_nms_thresh}")
        if not 0.0 <= box_agnostic_nms_decay < 1.0:
            raise ValueError(f"agnostic_nms_decay should be in [0, 1) (0: drop), got {box_agnostic_nms_decay}")
        self.test_flip_iou, self.agnostic_nms_thresh = test_flip_iou, box_agnostic_nms_thresh
        self.agnostic_nms_decay = box_agnostic_nms_decay
        channels = backbone.out_channels
        self.transform = GeneralizedRCNNTransform(min_size, max_size, list(image_mean), list(image_std))
        self.backbone, self.channels_last = backbone, channels_last
        self.rpn_levels = _pyramid_levels(rpn_levels, "rpn_levels")
        self.rpn = _region_proposal_network(
            channels, self.rpn_levels, anchor_sizes, aspect_ratios, batch_size_per_image=rpn_batch_size_per_image,
            pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            nms_thresh=rpn_nms_thresh, ignore_ioa=ignore_ioa)
        pool = KernelRoIPool(("0", "1", "2", "3"), output_size=7, sampling_ratio=roi_sampling_ratio, mode=roi_pool)
        self.roi_heads = IgnoreAwareRoIHeads(
            pool, TwoMLPHead(channels * 7 * 7, box_representation_size),
            FastRCNNPredictor(box_representation_size, num_classes), 0.5, 0.5, box_batch_size_per_image, 0.25,
            None, box_score_thresh, box_nms_thresh, box_detections_per_img, ignore_ioa=ignore_ioa)
        # Mixed precision: proposals decode in float32 (see _float32_outputs; the box head casts its own outputs);
        # the convolutions and the box head's layers still run in the autocast dtype. A hook keeps the state
        # dict's keys those of torchvision.
        self.rpn.head.register_forward_hook(_float32_outputs)
        self.counting_view = CountingView(
            channels, num_count_classes, levels=_pyramid_levels(count_levels, "count_levels"), stride=count_stride,
            channels=count_channels, num_convs=count_convs, feature_grad=count_feature_grad)

    def train_counting_only(self, enabled: bool = True) -> DPSNet:
        """Restrict training to the counting view: every other parameter stops requiring gradients, the rest
        of the model stays in eval mode (its batch-norm statistics frozen) under ``train()``, and a training
        forward computes the pyramid without gradients and returns the counting losses only (no RPN or box
        head work). A cheap refinement of the counter on the features a full run has learnt; ``False`` undoes
        it (each parameter trainable again as it was before, e.g. a ResNet's frozen stages stay frozen)."""
        if enabled and not self.counting_only:
            self._requires_grad_before = {n: p.requires_grad for n, p in self.named_parameters()}
            for name, param in self.named_parameters():
                param.requires_grad_(name.startswith("counting_view."))
        elif not enabled and self.counting_only:
            for name, param in self.named_parameters():
                param.requires_grad_(self._requires_grad_before[name])
            self._requires_grad_before = {}
        self.counting_only = bool(enabled)
        return self.train(self.training)

    def train(self, mode: bool = True) -> DPSNet:
        super().train(mode)
        if mode and self.counting_only:
            for name, module in self.named_children():
                if name != "counting_view":
                    module.eval()
        return self

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None, *,
                rescore=None, return_density: bool = False, return_box_logits: bool = False):
        if self.training:
            if targets is None:
                raise ValueError("targets should be given in training mode")
            return self._train_forward(images, targets, return_box_logits)
        if self.test_flips:
            return self._forward_flips(images, rescore, return_density)
        return self._eval_forward(images, rescore, return_density)

    def _pixels(self, batch) -> Tensor:
        return batch.tensors.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.tensors

    def _rpn_features(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        if tuple(features) == self.rpn_levels:
            return features
        return OrderedDict((lv, features[lv]) for lv in self.rpn_levels)

    def _train_forward(self, images: list[Tensor], targets: list[dict[str, Tensor]], return_box_logits: bool):
        batch, targets = self.transform(images, targets)
        targets = split_ignore(targets)
        padded = tuple(batch.tensors.shape[-2:])
        if self.counting_only:
            if return_box_logits:
                raise ValueError("return_box_logits needs the box head, and the model trains its counting view alone")
            with torch.no_grad():
                features = self.backbone(self._pixels(batch))
            return self.counting_losses(self.counting_view(features, padded), targets)
        features = self.backbone(self._pixels(batch))
        proposals, rpn_losses = self.rpn(batch, self._rpn_features(features), targets)
        _, box_losses, (sampled, class_logits) = self.roi_heads(features, proposals, batch.image_sizes, targets)
        density = self.counting_view(features, padded)
        losses = {**rpn_losses, **box_losses, **self.counting_losses(density, targets)}
        return (losses, BoxHeadOutput(batch, sampled, class_logits)) if return_box_logits else losses

    def _eval_forward(self, images: list[Tensor], rescore, return_density: bool) -> list[dict[str, Tensor]]:
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, _ = self.transform(images)
        features = self.backbone(self._pixels(batch))
        proposals, _ = self.rpn(batch, self._rpn_features(features))
        detections, _, _ = self.roi_heads(features, proposals, batch.image_sizes)
        detections = self._select(detections, batch, rescore)
        density = self.counting_view(features, tuple(batch.tensors.shape[-2:]))
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        counts = crop_counts(density, batch.image_sizes, self.counting_view.stride, self.density_scale)
        stride = self.counting_view.stride
        for i, det in enumerate(detections):
            det["counts"] = counts[i]
            if return_density:
                h, w = batch.image_sizes[i]
                det["density"] = density[i, :, : max(1, round(h / stride)), : max(1, round(w / stride))].float() \
                    .clamp(min=0) / self.density_scale
        return detections

    def _select(self, detections: list[dict[str, Tensor]], batch, rescore) -> list[dict[str, Tensor]]:
        """Each image's detections after the per-class NMS, re-scored by ``rescore`` (and sorted again), then
        reduced by the class-agnostic NMS (``box_agnostic_nms_thresh``; off at 0)."""
        boxes, scores, labels = ([d[k] for d in detections] for k in ("boxes", "scores", "labels"))
        if rescore is not None:  # the crops come from the resized images, in [0, 1]
            mean = batch.tensors.new_tensor(self.transform.image_mean)[:, None, None]
            std = batch.tensors.new_tensor(self.transform.image_std)[:, None, None]
            scores = rescore(batch.tensors * std + mean, boxes, scores, labels, batch.image_sizes)
            order = [s.argsort(descending=True, stable=True) for s in scores]
            boxes, scores, labels = ([x[o] for x, o in zip(part, order, strict=True)] for part in (boxes, scores, labels))
        if self.agnostic_nms_thresh > 0:
            kept = [agnostic_nms(b, s, lab, self.agnostic_nms_thresh, self.agnostic_nms_decay)
                    for b, s, lab in zip(boxes, scores, labels, strict=True)]
            boxes, scores, labels = (list(part) for part in zip(*kept, strict=True)) if kept else ([], [], [])
        return [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels, strict=True)]

    def _forward_flips(self, images: list[Tensor], rescore, return_density: bool) -> list[dict[str, Tensor]]:
        """Eval on every image and its ``test_flips`` views in one batch, mapped back and fused per image."""
        dims = [None] + [TEST_FLIPS[name] for name in self.test_flips]
        views = [img if d is None else torch.flip(img, d) for d in dims for img in images]
        outputs = self._eval_forward(views, rescore, return_density)
        fused = []
        for i, img in enumerate(images):
            height, width = img.shape[-2:]
            parts = []
            for v, d in enumerate(dims):
                det = dict(outputs[v * len(images) + i])
                boxes = det["boxes"].clone()
                if d is not None and -1 in d:
                    boxes[:, [0, 2]] = width - det["boxes"][:, [2, 0]]
                if d is not None and -2 in d:
                    boxes[:, [1, 3]] = height - det["boxes"][:, [3, 1]]
                if d is not None and "density" in det:
                    det["density"] = torch.flip(det["density"], d)
                parts.append({**det, "boxes": boxes, "view": torch.full_like(det["labels"], v)})
            boxes, scores, labels = fuse_views(
                torch.cat([p["boxes"] for p in parts]), torch.cat([p["scores"] for p in parts]),
                torch.cat([p["labels"] for p in parts]), torch.cat([p["view"] for p in parts]), len(dims),
                self.test_flip_iou, self.agnostic_nms_decay, self.roi_heads.detections_per_img)
            out = {"boxes": boxes, "labels": labels, "scores": scores,
                   "counts": torch.stack([p["counts"] for p in parts]).mean(dim=0)}
            if return_density:
                out["density"] = torch.stack([p["density"] for p in parts]).mean(dim=0)
            fused.append(out)
        return fused

    def counting_losses(self, density: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Density and count losses against maps rendered from the (resized) target boxes."""
        map_size = tuple(density.shape[-2:])
        stride = self.counting_view.stride
        target = density_targets([t["boxes"] for t in targets],
                                 [self.count_class_of_label[t["labels"]] for t in targets], map_size,
                                 num_classes=self.num_count_classes, stride=stride, sigma_scale=self.sigma_scale,
                                 sigma_rule=self.sigma_rule, min_sigma=self.min_sigma, check=False)  # in range: count_class_of_label's values
        mask = ignore_mask([t["ignore_boxes"] for t in targets], map_size, stride, [t["boxes"] for t in targets])
        return density_loss(density, target, mask, density_scale=self.density_scale,
                            pixel_weight=self.density_loss_weight, count_weight=self.count_loss_weight)


def dpsnet_model(
    num_classes: int,
    count_class_of_label: Sequence[int] | None = None,
    *,
    backbone: str = "small",
    backbone_weights: str | None = None,
    fpn_channels: int | None = None,
    small_channels: Sequence[int] = (32, 64, 128, 256),
    norm: str | None = None,
    trainable_layers: int = 3,
    **kwargs,
) -> DPSNet:
    """Build a :class:`DPSNet` with :func:`dpsnet.backbone.build_backbone` (``backbone`` names it); the other
    keyword arguments go to :class:`DPSNet`."""
    body = build_backbone(backbone, weights=backbone_weights, out_channels=fpn_channels,
                          small_channels=tuple(small_channels), norm=norm, trainable_layers=trainable_layers)
    return DPSNet(body, num_classes, count_class_of_label, **kwargs)
