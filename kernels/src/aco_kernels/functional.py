"""Public ops: validate arguments, then run the Triton kernel or the torch reference (see ``_dispatch``), or for
RoIAlign on request the plain-torch gather (:mod:`aco_kernels.gather`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import reference
from ._dispatch import KERNEL_MAX_LEVELS, use_kernel
from .gather import gather_roi_align

# How multiscale_roi_align computes: "auto", the Triton kernel where it runs (``_dispatch``), else the torch
# reference; "gather", one gather over the pyramid in plain torch (:mod:`aco_kernels.gather`).
ROI_ALIGN_METHODS = ("auto", "gather")


def density_render(
    centers: Tensor,
    sizes: Tensor,
    labels: Tensor,
    batch_index: Tensor,
    *,
    num_images: int,
    num_classes: int,
    map_size: tuple[int, int],
    stride: float,
    sigma_scale: float = 0.15,
    min_sigma: float = 1.0,
    truncate: float = 3.0,
    sigma_rule: str = "area",
    check: bool = True,
) -> Tensor:
    """Render per-class Gaussian density maps, each instance summing to exactly 1 on the map.

    Args:
        centers (Tensor[K, 2]): instance centres (x, y) in image pixels.
        sizes (Tensor[K, 2]): instance box sizes (w, h) in image pixels.
        labels (Tensor[K] int): class index in ``[0, num_classes)``.
        batch_index (Tensor[K] int): image index in ``[0, num_images)``.
        map_size ((H, W)): size of the density map; ``stride`` is image pixels per map pixel.
        sigma_scale, min_sigma, truncate: ``sigma = max(min_sigma, sigma_scale * side / stride)`` in map pixels;
            the Gaussian is cut at ``truncate * sigma`` (square window) and renormalised inside the map.
        sigma_rule: ``side`` is ``sqrt(w * h)`` (``"area"``) or ``min(w, h)`` (``"short_side"``, the released
            DPSNet's rule with ``sigma_scale = 5 / 24``).
        check: verify that labels and batch indices are in range (a ``ValueError`` if not). It costs one host
            sync on CUDA; ``False`` skips it, for callers whose indices are in range by construction (DPSNet's
            training step): the kernel then draws no instance whose plane is out of range, and the reference
            path raises from ``index_add_``.

    Returns:
        Tensor[num_images, num_classes, H, W] float32. Forward only (targets carry no gradient).
    """
    num = centers.shape[0]
    if centers.shape != (num, 2) or sizes.shape != (num, 2) or labels.shape != (num,) or batch_index.shape != (num,):
        raise ValueError(f"centers and sizes should be [K, 2] and labels, batch_index [K], got {tuple(centers.shape)}, "
                         f"{tuple(sizes.shape)}, {tuple(labels.shape)}, {tuple(batch_index.shape)}")
    if stride <= 0:
        raise ValueError(f"stride should be > 0, got {stride}")
    reference.check_density_args(min_sigma, truncate, sigma_rule)
    # One host sync for all four range checks; none while a CUDA graph is being captured (syncs are illegal
    # there): the kernel path then relies on the caller, and an out-of-range index fails on the device.
    if check and num > 0 and not (centers.is_cuda and torch.cuda.is_current_stream_capturing()):
        lo_label, hi_label, lo_image, hi_image = torch.stack(
            [labels.min(), labels.max(), batch_index.min(), batch_index.max()]).tolist()
        if lo_label < 0 or hi_label >= num_classes:
            raise ValueError(f"labels should be in [0, num_classes={num_classes}), got [{lo_label}, {hi_label}]")
        if lo_image < 0 or hi_image >= num_images:
            raise ValueError(f"batch_index should be in [0, num_images={num_images}), got [{lo_image}, {hi_image}]")
    args = (centers, sizes, labels, batch_index, num_images, num_classes, tuple(map_size), stride, sigma_scale,
            min_sigma, truncate, sigma_rule)
    if use_kernel(centers):
        from .ops.density_render import density_render_triton

        return density_render_triton(*args)
    return reference.density_render_reference(*args)


def _to_rois(boxes: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as one tensor should be rois [K, 5] (batch, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        return boxes
    if len(boxes) == 0:
        raise ValueError("boxes should hold one [K_i, 4] tensor per image, got an empty list")
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([ids, torch.cat(list(boxes))], dim=1)


def multiscale_roi_align(
    features: Sequence[Tensor],
    boxes: Tensor | Sequence[Tensor],
    image_shapes: Sequence[tuple[int, int]],
    *,
    output_size: int | tuple[int, int] = 7,
    sampling_ratio: int = 2,
    canonical_scale: float = 224,
    canonical_level: float = 4,
    aligned: bool = True,
    method: str = "auto",
) -> Tensor:
    """Assign each box an FPN level and RoIAlign it there: torchvision's MultiScaleRoIAlign in one launch.

    Args:
        features (list[Tensor[B, C, H_l, W_l]]): pyramid levels, finest first, each a power-of-two scale of
            the images; same dtype, device and C.
        boxes (list[Tensor[K_i, 4]] or Tensor[K, 5]): (x1, y1, x2, y2) in image pixels, one tensor per image,
            or rois with the image index first.
        image_shapes (list[(h, w)]): image sizes; the largest gives each level's scale (as torchvision).
        sampling_ratio: samples per bin side; ``<= 0`` adapts to ``ceil(roi size / output size)``.
        canonical_scale, canonical_level: ``level = floor(canonical_level + log2(sqrt(area) / canonical_scale))``.
        aligned: shift by half a pixel (RoIAlign ``aligned=True``); ``False`` equals torchvision's pooler.
        method: ``"auto"``, the Triton kernel where it runs (CUDA tensors, or forced: see ``dispatch_mode``), else
            the torch reference; ``"gather"``, one gather over the pyramid's pixels in plain torch
            (:func:`aco_kernels.gather.gather_roi_align`: a fixed ``sampling_ratio >= 1``, float32 out, a
            backward several times faster on CPU than torchvision's compiled op).

    Returns:
        Tensor[K, C, oh, ow] in the order of the boxes, in the features' dtype (float32 for ``"gather"``).
    """
    if len(features) == 0:
        raise ValueError("features should hold at least one level")
    if method not in ROI_ALIGN_METHODS:
        raise ValueError(f"method should be one of {ROI_ALIGN_METHODS}, got {method!r}")
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    output_size = (int(output_size[0]), int(output_size[1]))
    rois = _to_rois(boxes).to(device=features[0].device)
    scales = reference.infer_scales(features, image_shapes)
    if method == "gather":
        levels = reference.roi_levels(rois, scales, float(canonical_scale), float(canonical_level))
        return gather_roi_align(features, rois, levels, scales, output_size, sampling_ratio, aligned)
    args = (list(features), rois, scales, output_size, sampling_ratio, float(canonical_scale),
            float(canonical_level), aligned)
    if use_kernel(*features, rois) and len(features) <= KERNEL_MAX_LEVELS:
        from .ops.roi_align import multiscale_roi_align_triton

        return multiscale_roi_align_triton(*args)
    return reference.multiscale_roi_align_reference(*args)


def pyramid_fuse(levels: Sequence[Tensor], size: tuple[int, int], weights: Sequence[float] | None = None) -> Tensor:
    """Resize every level to ``size`` (bilinear, align_corners=False) and sum them, weighted, in one pass.

    Args:
        levels (list[Tensor[B, C, H_l, W_l]]): same B, C, dtype and device.
        size ((H, W)): output size, usually the finest level's.
        weights (list[float] or None): one per level (default 1.0 each); constants, not differentiated.

    Returns:
        Tensor[B, C, H, W] in the levels' dtype; differentiable w.r.t. every level.
    """
    if len(levels) == 0:
        raise ValueError("levels should hold at least one tensor")
    weights = [1.0] * len(levels) if weights is None else [float(w) for w in weights]
    if len(weights) != len(levels):
        raise ValueError(f"weights should have one entry per level ({len(levels)}), got {len(weights)}")
    shape = levels[0].shape[:2]
    if any(lv.dim() != 4 or lv.shape[:2] != shape for lv in levels):
        raise ValueError(f"levels should be [B, C, H_l, W_l] with equal B and C, got {[tuple(lv.shape) for lv in levels]}")
    size = (int(size[0]), int(size[1]))
    if use_kernel(*levels) and len(levels) <= KERNEL_MAX_LEVELS:
        from .ops.pyramid_fuse import pyramid_fuse_triton

        return pyramid_fuse_triton(list(levels), size, weights)
    return reference.pyramid_fuse_reference(levels, size, weights)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    alpha: float = 0.5,
    weights: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Knowledge-distillation loss, fused: no [N, C] probabilities are stored.

    ``row_i = T^2 * KL(softmax(t_i / T) || softmax(s_i / T))``; with ``labels`` it becomes
    ``alpha * CE(s_i, y_i) + (1 - alpha) * row_i`` (rows labelled ``ignore_index`` have CE 0); ``weights``
    scale rows; ``reduction`` is ``"mean"`` (sum / N), ``"sum"`` or ``"none"`` (Tensor[N]).

    Args:
        student_logits (Tensor[N, C]): differentiable.
        teacher_logits (Tensor[N, C]): a constant target (detached).
        labels (Tensor[N] int or None), weights (Tensor[N] or None).

    Returns:
        float32 loss (float64 for float64 logits): a scalar, or Tensor[N] for ``reduction="none"``.
    """
    if student_logits.dim() != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student_logits and teacher_logits should both be [N, C], got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature should be > 0, got {temperature}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction should be 'mean', 'sum' or 'none', got {reduction!r}")
    num = student_logits.shape[0]
    if labels is not None and labels.shape != (num,):
        raise ValueError(f"labels should be [N] = [{num}], got {tuple(labels.shape)}")
    if weights is not None and weights.shape != (num,):
        raise ValueError(f"weights should be [N] = [{num}], got {tuple(weights.shape)}")
    teacher_logits = teacher_logits.detach()
    args = (student_logits, teacher_logits, float(temperature), labels, float(alpha), weights, reduction, ignore_index)
    if use_kernel(student_logits, teacher_logits):
        from .ops.kd_loss import kd_loss_triton

        return kd_loss_triton(*args)
    return reference.kd_loss_reference(*args)
