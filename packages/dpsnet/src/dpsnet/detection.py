"""The detection view: torchvision's RPN and RoI heads taught about ignore regions, NMS across classes, the fusion
of test-time views, and the RoI pooler (aco_kernels' kernel or gather, or torchvision).

Ignore regions (``iscrowd: 1`` annotations) reach these modules as ``targets[i]["ignore_boxes"]``; an anchor or
proposal that would be background but lies mostly inside an ignore region (intersection over its own area
``>= ignore_ioa``) is neither foreground nor background: it gets label -1, which the samplers skip.

torchvision's box head suppresses overlapping detections per class only, so one product often comes out twice
under two look-alike SKUs, which double-counts it. ``agnostic_nms_thresh`` adds a class-agnostic NMS after it
(:func:`agnostic_nms`): one detection per place, the most confident class; the others can stay, with scores
decayed below any counting threshold, as second hypotheses for mAP.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, box_iou, nms

import aco_kernels

ROI_POOL_MODES = ("auto", "aco", "torchvision", "gather")


def box_ioa(boxes: Tensor, regions: Tensor) -> Tensor:
    """Intersection over the area of each box: Tensor[N, M] for boxes [N, 4] and regions [M, 4] (x1, y1, x2, y2).

    Boxes of zero area get 0.
    """
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    return inter / area.clamp(min=1e-6)[:, None]


def mark_ignored(labels: Tensor, boxes: Tensor, ignore_boxes: Tensor | None, ignore_ioa: float) -> Tensor:
    """Labels with background entries (0) inside an ignore region (IoA >= ``ignore_ioa``) set to -1.

    Args:
        labels (Tensor[N]): 1+ foreground, 0 background, -1 discarded (any dtype).
        boxes (Tensor[N, 4]): the anchors or proposals the labels belong to.
        ignore_boxes (Tensor[M, 4] or None): ignore regions.
    """
    if ignore_boxes is None or ignore_boxes.numel() == 0 or boxes.numel() == 0:
        return labels
    covered = box_ioa(boxes, ignore_boxes.to(boxes.dtype)).max(dim=1).values >= ignore_ioa
    return torch.where(covered & (labels == 0), torch.full_like(labels, -1), labels)


class IgnoreAwareRPN(RegionProposalNetwork):
    """torchvision's RPN whose background anchors inside ignore regions are left out of the loss."""

    def __init__(self, *args, ignore_ioa: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.ignore_ioa = ignore_ioa

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        labels = [mark_ignored(lab, anc, t.get("ignore_boxes"), self.ignore_ioa)
                  for lab, anc, t in zip(labels, anchors, targets, strict=True)]
        return labels, matched


def agnostic_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float, decay: float = 0.0
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy NMS over all classes together: a detection overlapping a higher-scored kept one (of any class) with
    an IoU above ``iou_thresh`` is suppressed. Suppressed detections are dropped (``decay = 0``) or kept with
    their score times ``decay``, below the kept ones' in practice: a counting threshold no longer sees them,
    while mAP still ranks them as second hypotheses. Returns ``(boxes, scores, labels)`` by decreasing score
    (stable: kept ones in greedy order first, then suppressed ones by index)."""
    keep = nms(boxes, scores, iou_thresh)
    if decay <= 0:
        return boxes[keep], scores[keep], labels[keep]
    suppressed = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
    suppressed[keep] = False
    order = torch.cat([keep, suppressed.nonzero().flatten()])
    new_scores = torch.cat([scores[keep], scores[suppressed] * decay])
    new_scores, rank = new_scores.sort(descending=True, stable=True)
    order = order[rank]
    return boxes[order], new_scores, labels[order]


def fuse_views(boxes: Tensor, scores: Tensor, labels: Tensor, views: Tensor, num_views: int, iou_thresh: float,
               decay: float = 0.0, max_detections: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse the detections of one image seen in ``num_views`` views (test-time flips, boxes already mapped back).

    Detections are grouped around the heads a class-agnostic NMS at ``iou_thresh`` keeps (each detection joins
    the head it overlaps most). A group's score for a class is the mean over the views of that view's best
    score for the class in the group (0 where a view missed it): an object seen in one view of two keeps half
    its score. Its box is the score-weighted mean of the group's boxes. The group's best class keeps its score;
    the others are dropped (``decay = 0``) or kept with their score times ``decay``, like :func:`agnostic_nms`.

    Args:
        boxes (Tensor[N, 4]), scores (Tensor[N]), labels (Tensor[N] int64): every view's detections.
        views (Tensor[N] int64): the view in ``[0, num_views)`` each detection comes from.

    Returns ``(boxes, scores, labels)`` by decreasing score, at most ``max_detections``.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), scores.reshape(0), labels.reshape(0)
    heads = nms(boxes, scores, iou_thresh)
    group = box_iou(boxes, boxes[heads]).argmax(dim=1)  # every detection overlaps its suppressor above iou_thresh
    classes, class_index = labels.unique(return_inverse=True)
    k, c = len(heads), len(classes)
    slot = (group * c + class_index) * num_views + views
    best = scores.new_zeros(k * c * num_views).scatter_reduce(0, slot, scores, reduce="amax", include_self=True)
    fused = best.view(k, c, num_views).sum(dim=2) / num_views  # [K, C]
    weight = scores.new_zeros(k).index_add(0, group, scores).clamp(min=1e-12)
    fused_boxes = boxes.new_zeros(k, 4).index_add(0, group, boxes * scores[:, None]) / weight[:, None]
    top = fused.argmax(dim=1)
    g, cls = (fused > 0).nonzero(as_tuple=True)
    out_scores = fused[g, cls]
    secondary = cls != top[g]
    if decay <= 0:
        g, cls, out_scores = g[~secondary], cls[~secondary], out_scores[~secondary]
    else:
        out_scores = torch.where(secondary, out_scores * decay, out_scores)
    out_scores, order = out_scores.sort(descending=True, stable=True)
    if max_detections is not None:
        out_scores, order = out_scores[:max_detections], order[:max_detections]
    return fused_boxes[g[order]], out_scores, classes[cls[order]]


class BoxHeadOutput(NamedTuple):
    """What a training forward of the box head saw, for soft distillation (:mod:`dpsnet.training.distill`).

    ``images``: the resized, normalised batch (an ``ImageList``); ``proposals`` (list[Tensor[N_i, 4]]): the
    proposals it sampled per image (detached); ``class_logits`` (Tensor[sum N_i, num_classes]): its class logits
    (bfloat16 under autocast).
    """

    images: ImageList
    proposals: list[Tensor]
    class_logits: Tensor


class IgnoreAwareRoIHeads(RoIHeads):
    """torchvision's RoI box head whose background proposals inside ignore regions are not sampled.

    ``forward`` is torchvision's box path (no masks or keypoints) returning ``(detections, losses, sampled)``:
    in training ``sampled = (proposals, class_logits)``, what soft distillation needs; in eval the detections
    after the per-class NMS (``sampled`` is None).
    """

    def __init__(self, *args, ignore_ioa: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.ignore_ioa = ignore_ioa

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("targets should be given in training mode")
            for t in targets:
                if not t["boxes"].is_floating_point() or t["labels"].dtype != torch.int64:
                    raise TypeError(f"target boxes should be floating point and labels int64, got "
                                    f"{t['boxes'].dtype} and {t['labels'].dtype}")
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        # Under bfloat16 autocast the predictor's outputs are bfloat16; the loss and the box decoding take them in
        # float32 (torchvision would decode boxes in the deltas' dtype), distillation the logits as they came.
        logits, regression = class_logits.float(), box_regression.float()
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(logits, regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            return [], losses, ([p.detach() for p in proposals], class_logits)
        boxes, scores, labels = self.postprocess_detections(logits, regression, proposals, image_shapes)
        detections = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels, strict=True)]
        return detections, {}, None

    def select_training_samples(self, proposals, targets):
        """torchvision's sampling, with background proposals inside ``targets[i]["ignore_boxes"]`` labelled -1
        (never sampled). Returns ``(proposals, matched_idxs, labels, regression_targets)`` per image."""
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        labels = [mark_ignored(lab, prop, t.get("ignore_boxes"), self.ignore_ioa)
                  for lab, prop, t in zip(labels, proposals, targets, strict=True)]
        sampled = self.subsample(labels)
        matched_gt_boxes = []
        for i, keep in enumerate(sampled):
            proposals[i], labels[i], matched_idxs[i] = proposals[i][keep], labels[i][keep], matched_idxs[i][keep]
            image_boxes = gt_boxes[i] if gt_boxes[i].numel() else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(image_boxes[matched_idxs[i]])
        return proposals, matched_idxs, labels, self.box_coder.encode(matched_gt_boxes, proposals)


class KernelRoIPool(nn.Module):
    """Multi-scale RoIAlign over the chosen pyramid levels, torchvision's level rule and call signature.

    ``mode``: ``aco`` always calls ``aco_kernels.multiscale_roi_align``; ``torchvision`` uses
    ``torchvision.ops.MultiScaleRoIAlign``; ``gather`` calls ``aco_kernels.multiscale_roi_align`` with
    ``method="gather"`` (one gather over the pyramid in plain torch); ``auto`` (default) calls aco_kernels where
    its kernel path is active (CUDA tensors, or forced with ``ACO_KERNELS_FORCE_TRITON``/``dispatch_mode``), and
    elsewhere the gather (a fixed sampling ratio) or torchvision's compiled op (adaptive sampling,
    ``sampling_ratio <= 0``): all compute the same thing;
    on CPU the gather's backward is several times faster than the compiled op's, which is several times faster
    than aco_kernels' plain-torch reference. ``aligned=True`` goes through aco_kernels or the gather.
    """

    def __init__(self, featmap_names: Sequence[str] = ("0", "1", "2", "3"), output_size: int = 7,
                 sampling_ratio: int = 2, aligned: bool = False, mode: str = "auto"):
        super().__init__()
        if mode not in ROI_POOL_MODES:
            raise ValueError(f"mode should be one of {ROI_POOL_MODES}, got {mode!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.mode = mode
        self.compiled = MultiScaleRoIAlign(self.featmap_names, output_size, sampling_ratio)

    def forward(self, features: OrderedDict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        levels = [features[name] for name in self.featmap_names]
        mode = self.mode
        if mode == "auto":
            mode = "aco" if aco_kernels.use_kernel(*levels) else "gather" if self.sampling_ratio >= 1 else "torchvision"
        if mode == "torchvision" and self.aligned:
            mode = "aco"
        if mode == "torchvision":
            return self.compiled(features, boxes, image_shapes)
        return aco_kernels.multiscale_roi_align(levels, boxes, image_shapes, output_size=self.output_size,
                                                sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                                                method="gather" if mode == "gather" else "auto")
