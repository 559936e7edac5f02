"""Plain-torch references: the source of truth for every kernel and the path used on CPU.

Everything here is vectorized torch (no Python loops over boxes, instances or rows); autograd gives the
backward. The benchmarks and tests import the references from this one module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------------------------- density


# How a box's size sets its Gaussian's sigma: "area", sigma_scale * sqrt(w * h) (the toolkit's), or
# "short_side", sigma_scale * min(w, h) (the released DPSNet's, with sigma_scale 5/24: its density.py:60-61).
SIGMA_RULES = ("area", "short_side")


def check_density_args(min_sigma: float, truncate: float, sigma_rule: str = "area") -> None:
    if min_sigma <= 0 or truncate * min_sigma < 1.0:
        raise ValueError(f"min_sigma * truncate should be >= 1 (so every instance covers a pixel), got "
                         f"min_sigma={min_sigma}, truncate={truncate}")
    if sigma_rule not in SIGMA_RULES:
        raise ValueError(f"sigma_rule should be one of {SIGMA_RULES}, got {sigma_rule!r}")


def density_params(centers: Tensor, sizes: Tensor, map_size: tuple[int, int], stride: float, sigma_scale: float,
                   min_sigma: float, truncate: float, sigma_rule: str = "area") -> tuple[Tensor, Tensor, Tensor]:
    """The one sigma rule, shared by the reference and the kernel.

    Returns ``(cx, cy, sigma)``, each Tensor[K] float32 in map pixels: the centre divided by ``stride`` and
    clamped into the map ``[0, W] x [0, H]``, and for an instance box of ``w x h`` image pixels
    ``sigma = max(min_sigma, sigma_scale * side / stride)`` with ``side = sqrt(w * h)`` (``sigma_rule="area"``)
    or ``min(w, h)`` (``"short_side"``).
    """
    check_density_args(min_sigma, truncate, sigma_rule)
    height, width = map_size
    centers = centers.to(torch.float32) / stride
    sizes = sizes.to(torch.float32).clamp(min=0)
    cx = centers[:, 0].clamp(0.0, float(width))
    cy = centers[:, 1].clamp(0.0, float(height))
    side = torch.sqrt(sizes[:, 0] * sizes[:, 1]) if sigma_rule == "area" else torch.minimum(sizes[:, 0], sizes[:, 1])
    sigma = (sigma_scale * side / stride).clamp(min=min_sigma)
    return cx, cy, sigma


def _gaussian_1d(center: Tensor, sigma: Tensor, length: int, truncate: float) -> Tensor:
    """Truncated, normalised 1-D Gaussians at pixel centres ``i + 0.5``: Tensor[K, length], rows sum to 1."""
    grid = torch.arange(length, dtype=torch.float32, device=center.device) + 0.5
    d = grid[None, :] - center[:, None]
    g = torch.exp(-(d * d) / (2.0 * sigma[:, None] * sigma[:, None]))
    g = torch.where(d.abs() <= truncate * sigma[:, None], g, torch.zeros_like(g))
    return g / g.sum(dim=1, keepdim=True)


def density_render_reference(centers: Tensor, sizes: Tensor, labels: Tensor, batch_index: Tensor, num_images: int,
                             num_classes: int, map_size: tuple[int, int], stride: float, sigma_scale: float = 0.15,
                             min_sigma: float = 1.0, truncate: float = 3.0, sigma_rule: str = "area") -> Tensor:
    """Per-class density maps Tensor[B, C, H, W] float32; each instance sums to 1 (see ``density_params``).

    The Gaussian is separable and truncated to a square ``|dx|, |dy| <= truncate * sigma``, then
    renormalised over the pixels inside the map, so instances at borders also sum to exactly 1.
    """
    height, width = map_size
    out = torch.zeros(num_images * num_classes, height, width, dtype=torch.float32, device=centers.device)
    if centers.shape[0] > 0 and height > 0 and width > 0:
        cx, cy, sigma = density_params(centers, sizes, map_size, stride, sigma_scale, min_sigma, truncate, sigma_rule)
        gx = _gaussian_1d(cx, sigma, width, truncate)
        gy = _gaussian_1d(cy, sigma, height, truncate)
        plane = batch_index.to(torch.int64) * num_classes + labels.to(torch.int64)
        out.index_add_(0, plane, gy[:, :, None] * gx[:, None, :])
    return out.view(num_images, num_classes, height, width)


# --------------------------------------------------------------------------------------------- roi align


def box_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float, canonical_level: float,
               eps: float = 1e-6) -> Tensor:
    """FPN level index (0 = finest given level) per box, as torchvision's LevelMapper: Tensor[K] int64."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = torch.sqrt(area)
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    return (lvl.clamp(min=k_min, max=k_max).to(torch.int64) - k_min)


def roi_levels(rois: Tensor, scales: Sequence[float], canonical_scale: float = 224, canonical_level: float = 4
               ) -> Tensor:
    """Pyramid level index per roi [K, 5] for levels at ``scales`` (finest first), as torchvision's
    MultiScaleRoIAlign assigns them: Tensor[K] int64; with one level every roi gets it."""
    if len(scales) == 1:
        return torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    k_min = round(-math.log2(scales[0]))
    k_max = round(-math.log2(scales[-1]))
    return box_levels(rois[:, 1:], k_min, k_max, canonical_scale, canonical_level)


def roi_axis_samples(coord: Tensor, size: int | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's RoIAlign bilinear rule along one axis, the one rule of every torch RoIAlign path here (the
    Triton kernel writes it again in ``ops.roi_align._bilinear``): for sample coordinates ``coord`` (any shape) on
    an axis of ``size`` pixels (an int, or a tensor broadcasting with ``coord``), the low and high pixel indices
    (int64), the weight of the high one, and whether the sample counts (at most one pixel outside the map)."""
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.to(torch.int64)
    top = low >= size - 1
    low = torch.where(top, size - 1, low)
    high = torch.where(top, size - 1, low + 1)
    frac = torch.where(top, torch.zeros_like(coord), coord - low.to(coord.dtype))
    return low, high, frac, inside


def _bilinear_gather(feature_hwc: Tensor, batch: Tensor, y: Tensor, x: Tensor, height: int, width: int) -> Tensor:
    """torchvision's RoIAlign bilinear sample of ``feature_hwc`` [B*H*W, C] at float (y, x) of any shape S:
    Tensor[*S, C]; points more than one pixel outside the map give 0."""
    y_low, y_high, ly, y_inside = roi_axis_samples(y, height)
    x_low, x_high, lx, x_inside = roi_axis_samples(x, width)
    hy = 1.0 - ly
    hx = 1.0 - lx
    base = batch * (height * width)

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return feature_hwc[base + yy * width + xx]

    val = ((hy * hx)[..., None] * at(y_low, x_low) + (hy * lx)[..., None] * at(y_low, x_high)
           + (ly * hx)[..., None] * at(y_high, x_low) + (ly * lx)[..., None] * at(y_high, x_high))
    return torch.where((y_inside & x_inside)[..., None], val, torch.zeros_like(val))


def roi_align_reference(feature: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                        sampling_ratio: int, aligned: bool) -> Tensor:
    """Pure-torch RoIAlign equal to ``torchvision.ops.roi_align``: feature [B, C, H, W], rois [K, 5]
    (batch index, x1, y1, x2, y2) -> Tensor[K, C, oh, ow]."""
    num_boxes = rois.shape[0]
    _, channels, height, width = feature.shape
    ph, pw = output_size
    if num_boxes == 0:
        return feature.new_zeros(0, channels, ph, pw)
    dtype = feature.dtype
    rois = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    batch = rois[:, 0].to(torch.int64)
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / ph
    bin_w = roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full_like(batch, sampling_ratio)
        grid_w = torch.full_like(batch, sampling_ratio)
    else:
        grid_h = torch.ceil(roi_h / ph).to(torch.int64)
        grid_w = torch.ceil(roi_w / pw).to(torch.int64)
    max_gh = sampling_ratio if sampling_ratio > 0 else int(grid_h.max())
    max_gw = sampling_ratio if sampling_ratio > 0 else int(grid_w.max())
    count = (grid_h * grid_w).clamp(min=1).to(dtype)
    # Sample coordinates [K, ph, gh] and [K, pw, gw]; samples beyond a box's own grid are masked out.
    iy = torch.arange(max_gh, device=feature.device)
    ix = torch.arange(max_gw, device=feature.device)
    p_y = torch.arange(ph, device=feature.device, dtype=dtype)
    p_x = torch.arange(pw, device=feature.device, dtype=dtype)
    # Empty boxes have a 0-sample grid; dividing by 1 keeps their (masked) coordinates finite for autograd.
    gh = grid_h.clamp(min=1).to(dtype)[:, None, None]
    gw = grid_w.clamp(min=1).to(dtype)[:, None, None]
    ys = y1[:, None, None] + p_y[None, :, None] * bin_h[:, None, None] + (iy.to(dtype) + 0.5)[None, None, :] * bin_h[:, None, None] / gh
    xs = x1[:, None, None] + p_x[None, :, None] * bin_w[:, None, None] + (ix.to(dtype) + 0.5)[None, None, :] * bin_w[:, None, None] / gw
    # Broadcast to [K, ph, gh, pw, gw] sample points.
    y = ys[:, :, :, None, None].expand(-1, -1, -1, pw, max_gw)
    x = xs[:, None, None, :, :].expand(-1, ph, max_gh, -1, -1)
    feature_hwc = feature.permute(0, 2, 3, 1).reshape(-1, channels)
    b = batch[:, None, None, None, None]
    vals = _bilinear_gather(feature_hwc, b, y, x, height, width)  # [K, ph, gh, pw, gw, C]
    if sampling_ratio <= 0:
        valid = (iy[None, None, :, None, None] < grid_h[:, None, None, None, None]) & (
            ix[None, None, None, None, :] < grid_w[:, None, None, None, None])
        vals = torch.where(valid[..., None], vals, torch.zeros_like(vals))
    out = vals.sum(dim=(2, 4)) / count[:, None, None, None]  # [K, ph, pw, C]
    return out.permute(0, 3, 1, 2).contiguous()


def infer_scales(features: Sequence[Tensor], image_shapes: Sequence[tuple[int, int]]) -> list[float]:
    """Each level's spatial scale, a power of two, as torchvision's MultiScaleRoIAlign infers it."""
    if not image_shapes:
        raise ValueError("image_shapes should not be empty")
    original = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    return [2.0 ** round(math.log2(f.shape[-2] / original[0])) for f in features]


def multiscale_roi_align_reference(features: Sequence[Tensor], rois: Tensor, scales: Sequence[float],
                                   output_size: tuple[int, int] = (7, 7), sampling_ratio: int = 2,
                                   canonical_scale: float = 224, canonical_level: float = 4, aligned: bool = True
                                   ) -> Tensor:
    """FPN level per box (torchvision's LevelMapper) then RoIAlign on that level: rois [K, 5] -> [K, C, oh, ow].

    With one level every box uses it (as torchvision does). Loops over levels only, like torchvision.
    """
    if len(features) == 1:
        return roi_align_reference(features[0], rois, output_size, scales[0], sampling_ratio, aligned)
    levels = roi_levels(rois, scales, canonical_scale, canonical_level)
    channels = features[0].shape[1]
    out = features[0].new_zeros(rois.shape[0], channels, *output_size)
    for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
        idx = torch.nonzero(levels == level).flatten()
        out = out.index_put((idx,), roi_align_reference(feature, rois[idx], output_size, scale, sampling_ratio,
                                                        aligned))
    return out


# --------------------------------------------------------------------------------------------- pyramid fuse


def pyramid_fuse_reference(levels: Sequence[Tensor], size: tuple[int, int], weights: Sequence[float]) -> Tensor:
    """``sum_l weights[l] * interpolate(levels[l], size, bilinear, align_corners=False)``: [B, C, *size]."""
    out = None
    for level, w in zip(levels, weights, strict=True):
        term = F.interpolate(level, size=size, mode="bilinear", align_corners=False) * w
        out = term if out is None else out + term
    return out


# --------------------------------------------------------------------------------------------- kd loss


def kd_loss_reference(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                      labels: Tensor | None = None, alpha: float = 0.5, weights: Tensor | None = None,
                      reduction: str = "mean", ignore_index: int = -100) -> Tensor:
    """Distillation loss per row ``T^2 KL(softmax(t/T) || softmax(s/T))``, with labels mixed as
    ``alpha * CE(s, y) + (1 - alpha) * T^2 KL``; rows scaled by ``weights``; ``mean`` divides by N rows.
    Computed in float32 (float64 for float64 logits); the teacher is a constant (detached)."""
    acc = torch.promote_types(student_logits.dtype, torch.float32)
    s = student_logits.to(acc)
    t = teacher_logits.detach().to(acc)
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    row = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=-1) * (temperature ** 2)
    if labels is not None:
        ce = F.cross_entropy(s, labels, reduction="none", ignore_index=ignore_index)
        row = alpha * ce + (1.0 - alpha) * row
    if weights is not None:
        row = row * weights.to(acc)
    if reduction == "none":
        return row
    if reduction == "sum":
        return row.sum()
    return row.sum() / max(row.shape[0], 1)
