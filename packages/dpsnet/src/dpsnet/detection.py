"""The detection view: torchvision's RPN and RoI heads taught about ignore regions, NMS across classes, the fusion
of test-time views, and the RoI pooler (aco_kernels, torchvision, or one gather).

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


def _axis_samples(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's RoIAlign bilinear rule along one axis for sample coordinates ``coord`` (any shape): the
    low and high pixel indices, their weights, and whether the sample counts (at most a pixel outside)."""
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.to(torch.int64)
    top = low >= size - 1
    low = torch.where(top, size - 1, low)
    high = torch.where(top, size - 1, low + 1)
    frac = torch.where(top, torch.zeros_like(coord), coord - low.to(coord.dtype))
    return low, high, frac, inside


def gather_plan(rois: Tensor, level_of_roi: Tensor, shapes: Sequence[tuple[int, int, int]], scales: Sequence[float],
                output_size: tuple[int, int], sampling_ratio: int, aligned: bool) -> tuple[Tensor, Tensor]:
    """Where RoIAlign reads: for rois [R, 5] (image index, x1, y1, x2, y2) on the levels ``level_of_roi`` [R] of a
    pyramid whose level ``l`` is [B, H_l, W_l] = ``shapes[l]`` at ``scales[l]``, the rows of the levels' pixels
    stacked channels-last (level 0's B*H_0*W_0 pixels first) and their weights, each Tensor[R*oh*ow, 4*s*s]
    with s = ``sampling_ratio``: output bin = sum(weights * rows). Samples more than a pixel outside the map
    weigh 0, as in torchvision."""
    oh, ow = output_size
    s = sampling_ratio
    dtype = rois.dtype
    sizes = torch.tensor([(h, w) for _, h, w in shapes], dtype=torch.int64, device=rois.device)[level_of_roi]
    starts = torch.tensor([0] + [b * h * w for b, h, w in shapes[:-1]], device=rois.device).cumsum(0)[level_of_roi]
    scale = torch.tensor(list(scales), dtype=dtype, device=rois.device)[level_of_roi]
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    roi_w, roi_h = rois[:, 3] * scale - offset - x1, rois[:, 4] * scale - offset - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    grid = (torch.arange(s, dtype=dtype, device=rois.device) + 0.5) / s
    ys = y1[:, None, None] + (torch.arange(oh, dtype=dtype, device=rois.device)[:, None] + grid) \
        * (roi_h / oh)[:, None, None]  # [R, oh, s]
    xs = x1[:, None, None] + (torch.arange(ow, dtype=dtype, device=rois.device)[:, None] + grid) \
        * (roi_w / ow)[:, None, None]  # [R, ow, s]
    height, width = sizes[:, 0, None, None], sizes[:, 1, None, None]
    y_lo, y_hi, ly, y_in = _axis_samples(ys, height)
    x_lo, x_hi, lx, x_in = _axis_samples(xs, width)
    # [R, oh, s, 2] rows and weights along y, [R, ow, s, 2] along x, combined to [R, oh, ow, s*s*4]
    y_rows = torch.stack([y_lo, y_hi], -1) * width[..., None]
    y_w = torch.stack([1 - ly, ly], -1) * y_in[..., None]
    x_rows, x_w = torch.stack([x_lo, x_hi], -1), torch.stack([1 - lx, lx], -1) * x_in[..., None]
    base = (starts + rois[:, 0].to(torch.int64) * sizes[:, 0] * sizes[:, 1])[:, None, None, None, None, None, None]
    rows = base + y_rows[:, :, None, :, None, :, None] + x_rows[:, None, :, None, :, None, :]
    weights = y_w[:, :, None, :, None, :, None] * x_w[:, None, :, None, :, None, :] / (s * s)
    return rows.reshape(-1, s * s * 4), weights.reshape(-1, s * s * 4)


class _GatherRows(torch.autograd.Function):
    """``out[k] = sum_j weights[k, j] * table[rows[k, j]]``, backward by one ``index_add_`` (deterministic on
    CPU): torchvision's CPU RoIAlign backward walks every RoI, channel and bin in one thread."""

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(rows, weights)
        ctx.num_rows = table.shape[0]
        with torch.autocast(table.device.type, enabled=False):  # float32 sums, as torchvision's RoIAlign
            return torch.bmm(weights[:, None, :], table[rows.reshape(-1)].view(*rows.shape, -1)).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weights = ctx.saved_tensors
        grad = grad.to(weights.dtype)  # under autocast the box head hands back a bfloat16 gradient
        spread = (weights[:, :, None] * grad[:, None, :]).reshape(-1, grad.shape[1])
        table_grad = grad.new_zeros(ctx.num_rows, grad.shape[1]).index_add_(0, rows.reshape(-1), spread)
        return table_grad, None, None


def gather_roi_align(levels: Sequence[Tensor], rois: Tensor, level_of_roi: Tensor, scales: Sequence[float],
                     output_size: tuple[int, int] = (7, 7), sampling_ratio: int = 1, aligned: bool = False) -> Tensor:
    """Multi-level RoIAlign as one gather over the pyramid's pixels: Tensor[R, C, oh, ow] in float32, equal to
    torchvision's ``roi_align`` of each RoI on its level (fixed ``sampling_ratio`` >= 1). Its backward is an
    ``index_add_`` over channels-last rows, several times faster on CPU than torchvision's compiled backward."""
    if sampling_ratio < 1:
        raise ValueError(f"gather_roi_align needs a fixed sampling_ratio >= 1, got {sampling_ratio}")
    channels = levels[0].shape[1]
    if len(rois) == 0:
        return levels[0].new_zeros(0, channels, *output_size, dtype=torch.float32)
    table = torch.cat([lv.float().permute(0, 2, 3, 1).reshape(-1, channels) for lv in levels])
    rows, weights = gather_plan(rois.float(), level_of_roi, [(lv.shape[0], lv.shape[2], lv.shape[3]) for lv in levels],
                                scales, output_size, sampling_ratio, aligned)
    out = _GatherRows.apply(table, rows, weights)
    return out.view(len(rois), *output_size, channels).permute(0, 3, 1, 2)


class KernelRoIPool(nn.Module):
    """Multi-scale RoIAlign over the chosen pyramid levels, torchvision's level rule and call signature.

    ``mode``: ``aco`` always calls ``aco_kernels.multiscale_roi_align``; ``torchvision`` uses
    ``torchvision.ops.MultiScaleRoIAlign``; ``gather`` uses :func:`gather_roi_align`; ``auto`` (default) calls
    aco_kernels where its kernel path is active (CUDA tensors, or forced with
    ``ACO_KERNELS_FORCE_TRITON``/``dispatch_mode``), and elsewhere :func:`gather_roi_align` (a fixed sampling
    ratio) or torchvision's compiled op (adaptive sampling, ``sampling_ratio <= 0``): all compute the same thing;
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
        if mode == "gather":
            rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
            scales = aco_kernels.reference.infer_scales(levels, image_shapes)
            level_of_roi = aco_kernels.reference.roi_levels(rois, scales)  # torchvision's rule, as the other modes
            return gather_roi_align(levels, rois, level_of_roi, scales, (self.output_size,) * 2, self.sampling_ratio,
                                    self.aligned)
        if mode == "torchvision":
            return self.compiled(features, boxes, image_shapes)
        return aco_kernels.multiscale_roi_align(levels, boxes, image_shapes, output_size=self.output_size,
                                                sampling_ratio=self.sampling_ratio, aligned=self.aligned)
