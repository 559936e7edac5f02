"""DPSNet: Faster R-CNN + FPN (detection view) whose pyramid also feeds a density-map counting view."""

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
from .counting import CountingView, class_loss, crop_counts, density_loss, density_targets, ignore_mask
from .detection import IgnoreAwareRoIHeads, IgnoreAwareRPN, KernelRoIPool, fuse_views


def _float32_outputs(module: nn.Module, args, output):
    """Forward hook: floating outputs of a head returned in float32 (nested lists and tuples too).

    Under bfloat16 autocast the RPN head and the box predictor give bfloat16 box deltas, and torchvision's
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


class DPSNet(nn.Module):
    """Detector and counter sharing one feature pyramid.

    ``model(images, targets)`` takes ``images (list[Tensor[3, H, W]])`` in [0, 1] and, in training, ``targets``
    with ``boxes (Tensor[K, 4])`` in (x1, y1, x2, y2) image pixels, ``labels (Tensor[K] int64)`` in
    ``[1, num_classes)`` and optionally ``iscrowd (Tensor[K])`` (ignore regions); it returns a dict of losses.
    In eval it returns one dict per image: ``boxes``, ``labels``, ``scores`` and ``counts (Tensor[C])``, the
    integral of each counting class's density map (plus ``density (Tensor[C, h, w])`` when
    ``return_density`` is set).

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
        self,
        backbone: nn.Module,
        num_classes: int,
        count_class_of_label: Sequence[int] | None = None,
        num_count_classes: int | None = None,
        *,
        # input transform
        channels_last: bool = False,
        min_size: int | tuple[int, ...] = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        # RPN
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_levels: Sequence[str] = ("0", "1", "2", "3", "pool"),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_batch_size_per_image: int = 256,
        # box head
        box_representation_size: int = 1024,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_agnostic_nms_thresh: float = 0.0,
        box_agnostic_nms_decay: float = 0.0,
        box_detections_per_img: int = 100,
        box_batch_size_per_image: int = 512,
        test_flips: str | Sequence[str] = "",
        test_flip_iou: float = 0.5,
        ignore_ioa: float = 0.5,
        roi_pool: str = "auto",
        roi_sampling_ratio: int = 2,
        # counting view
        count_levels: Sequence[str] = ("1", "2", "3"),
        count_stride: int = 8,
        count_channels: int = 64,
        count_convs: int = 2,
        count_head: str = "direct",
        count_norm: str = "batch",
        count_feature_grad: float = 1.0,
        density_scale: float = 100.0,
        sigma_scale: float = 0.15,
        sigma_rule: str = "area",
        min_sigma: float = 1.0,
        density_loss_weight: float = 1.0,
        count_loss_weight: float = 1.0,
        class_loss_weight: float = 1.0,
    ):
        super().__init__()
        if count_class_of_label is None:
            count_class_of_label = [0, *range(num_classes - 1)]
        if len(count_class_of_label) != num_classes:
            raise ValueError(f"count_class_of_label should have num_classes={num_classes} entries, "
                             f"got {len(count_class_of_label)}")
        num_count_classes = num_count_classes or max(count_class_of_label) + 1
        if min(count_class_of_label) < 0 or max(count_class_of_label) >= num_count_classes:
            # checked once here, so that the training step renders its density targets without a range check
            raise ValueError(f"count_class_of_label should be in [0, num_count_classes={num_count_classes}), got "
                             f"[{min(count_class_of_label)}, {max(count_class_of_label)}]")
        self.register_buffer("count_class_of_label", torch.as_tensor(list(count_class_of_label), dtype=torch.int64))
        self.num_count_classes = num_count_classes
        self.density_scale, self.sigma_scale, self.min_sigma = density_scale, sigma_scale, min_sigma
        if sigma_rule not in ("area", "short_side"):
            raise ValueError(f"sigma_rule should be 'area' or 'short_side', got {sigma_rule!r}")
        self.sigma_rule = sigma_rule
        self.density_loss_weight, self.count_loss_weight = density_loss_weight, count_loss_weight
        self.class_loss_weight = class_loss_weight
        self.return_density = False
        self.counting_only = False  # train_counting_only() sets it
        self._requires_grad_before: dict[str, bool] = {}
        self.test_flips = parse_test_flips(test_flips)
        if not 0.0 < test_flip_iou <= 1.0:
            raise ValueError(f"test_flip_iou should be in (0, 1], got {test_flip_iou}")
        self.test_flip_iou = test_flip_iou

        channels = backbone.out_channels
        self.transform = GeneralizedRCNNTransform(min_size, max_size, list(image_mean), list(image_std))
        self.backbone = backbone
        self.channels_last = channels_last
        self.rpn_levels = tuple(str(lv) for lv in rpn_levels)
        unknown = sorted(set(self.rpn_levels) - set(PYRAMID_LEVELS))
        if unknown or not self.rpn_levels or len(set(self.rpn_levels)) != len(self.rpn_levels):
            raise ValueError(f"rpn_levels should be distinct pyramid levels among {PYRAMID_LEVELS}, got "
                             f"{list(rpn_levels)}")
        if len(anchor_sizes) % len(self.rpn_levels):
            raise ValueError(f"anchor_sizes ({len(anchor_sizes)} sizes) should split evenly over the "
                             f"{len(self.rpn_levels)} rpn_levels {list(self.rpn_levels)}")
        per_level = len(anchor_sizes) // len(self.rpn_levels)
        anchors = AnchorGenerator(
            tuple(tuple(anchor_sizes[i * per_level:(i + 1) * per_level]) for i in range(len(self.rpn_levels))),
            (tuple(aspect_ratios),) * len(self.rpn_levels))
        self.rpn = IgnoreAwareRPN(
            anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]), 0.7, 0.3, rpn_batch_size_per_image,
            0.5, {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test}, rpn_nms_thresh,
            ignore_ioa=ignore_ioa)
        pool = KernelRoIPool(("0", "1", "2", "3"), output_size=7, sampling_ratio=roi_sampling_ratio,
                              mode=roi_pool)
        self.roi_heads = IgnoreAwareRoIHeads(
            pool, TwoMLPHead(channels * 7 * 7, box_representation_size),
            FastRCNNPredictor(box_representation_size, num_classes), 0.5, 0.5, box_batch_size_per_image, 0.25,
            None, box_score_thresh, box_nms_thresh, box_detections_per_img, ignore_ioa=ignore_ioa,
            agnostic_nms_thresh=box_agnostic_nms_thresh, agnostic_nms_decay=box_agnostic_nms_decay)
        # Mixed precision: boxes decode in float32 (see _float32_outputs); the convolutions and the box head's
        # layers still run in the autocast dtype. Hooks keep the state dict's keys those of torchvision.
        self.rpn.head.register_forward_hook(_float32_outputs)
        self.roi_heads.box_predictor.register_forward_hook(_float32_outputs)
        count_levels = tuple(str(lv) for lv in count_levels)
        if not count_levels or len(set(count_levels)) != len(count_levels) or set(count_levels) - set(PYRAMID_LEVELS):
            raise ValueError(f"count_levels should be distinct pyramid levels among {PYRAMID_LEVELS}, got "
                             f"{list(count_levels)}")
        self.counting_view = CountingView(channels, num_count_classes, levels=count_levels, stride=count_stride,
                                          channels=count_channels, num_convs=count_convs, head=count_head,
                                          norm=count_norm, feature_grad=count_feature_grad)

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

    def set_rescorer(self, rescorer: nn.Module | None) -> None:
        """Re-score the box head's detections at inference with a crop classifier
        (:class:`dpsnet.reclassify.CropRescorer`; ``None``: off). It is not part of the model's state dict."""
        if rescorer is not None:
            rescorer = rescorer.to(next(self.parameters()).device).eval()
        self.roi_heads.__dict__["rescorer"] = rescorer

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("targets should be given in training mode")
        if not self.training and self.test_flips:
            return self._forward_flips(images)
        return self._forward(images, targets)

    def _forward_flips(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Eval on every image and its ``test_flips`` views in one batch, mapped back and fused per image."""
        dims = [None] + [TEST_FLIPS[name] for name in self.test_flips]
        views = [img if d is None else torch.flip(img, d) for d in dims for img in images]
        outputs = self._forward(views, None)
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
                self.test_flip_iou, self.roi_heads.agnostic_nms_decay, self.roi_heads.detections_per_img)
            out = {"boxes": boxes, "labels": labels, "scores": scores,
                   "counts": torch.stack([p["counts"] for p in parts]).mean(dim=0)}
            if "density" in parts[0]:
                out["density"] = torch.stack([p["density"] for p in parts]).mean(dim=0)
            fused.append(out)
        return fused

    def _forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None):
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        det_targets = split_ignore(targets) if targets is not None else None
        if self.training and self.roi_heads.record:
            self.recorded_batch = batch  # the resized, normalised batch, for a teacher to see the same input
        pixels = batch.tensors.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.tensors
        if self.training and self.counting_only:
            with torch.no_grad():
                features = self.backbone(pixels)
            density, class_logits = self.counting_view.parts(features, tuple(batch.tensors.shape[-2:]))
            return self.counting_losses(density, det_targets, class_logits)
        features = self.backbone(pixels)
        rpn_features = features if tuple(features) == self.rpn_levels else \
            OrderedDict((lv, features[lv]) for lv in self.rpn_levels)
        proposals, rpn_losses = self.rpn(batch, rpn_features, det_targets)
        if not self.training and self.roi_heads.rescorer is not None:  # the crops come from the resized images
            mean = batch.tensors.new_tensor(self.transform.image_mean)[:, None, None]
            std = batch.tensors.new_tensor(self.transform.image_std)[:, None, None]
            self.roi_heads._rescore_input = (batch.tensors * std + mean, batch.image_sizes)
        try:
            detections, box_losses = self.roi_heads(features, proposals, batch.image_sizes, det_targets)
        finally:
            self.roi_heads._rescore_input = None
        density, class_logits = self.counting_view.parts(features, tuple(batch.tensors.shape[-2:]))
        if self.training:
            return {**rpn_losses, **box_losses, **self.counting_losses(density, det_targets, class_logits)}
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        counts = crop_counts(density, batch.image_sizes, self.counting_view.stride, self.density_scale)
        for i, det in enumerate(detections):
            det["counts"] = counts[i]
            if self.return_density:
                h, w = batch.image_sizes[i]
                stride = self.counting_view.stride
                det["density"] = density[i, :, : max(1, round(h / stride)), : max(1, round(w / stride))].float() \
                    .clamp(min=0) / self.density_scale
        return detections

    def counting_losses(self, density: Tensor, targets: list[dict[str, Tensor]],
                        class_logits: Tensor | None = None) -> dict[str, Tensor]:
        """Density and count losses against maps rendered from the (resized) target boxes, plus the class
        loss of the factorized head when its ``class_logits`` are given."""
        map_size = tuple(density.shape[-2:])
        stride = self.counting_view.stride
        target = density_targets([t["boxes"] for t in targets],
                                 [self.count_class_of_label[t["labels"]] for t in targets], map_size,
                                 num_classes=self.num_count_classes, stride=stride, sigma_scale=self.sigma_scale,
                                 sigma_rule=self.sigma_rule, min_sigma=self.min_sigma, check=False)  # in range: count_class_of_label's values
        mask = ignore_mask([t["ignore_boxes"] for t in targets], map_size, stride, [t["boxes"] for t in targets])
        losses = density_loss(density, target, mask, density_scale=self.density_scale,
                              pixel_weight=self.density_loss_weight, count_weight=self.count_loss_weight)
        if class_logits is not None:
            losses["loss_count_class"] = class_loss(class_logits, target, mask, weight=self.class_loss_weight)
        return losses


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
