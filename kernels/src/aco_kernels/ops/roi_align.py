"""Fused multi-scale RoIAlign: FPN level per box and RoIAlign on that level, all levels in one launch.

One program per (box, channel block) computes the box's level (torchvision's LevelMapper formula), picks
that level's feature map from a pointer table and pools all output bins for its channels. The backward
walks the same samples and scatters into each level's gradient with atomics (float32 buffers, float64
for float64 inputs), laid out [N, H, W, C] so that the lanes of a warp add to one memory line (the gradients
come back as channels-last views).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import acc_dtypes, autotune_configs, level_args, pad_levels, pick, tl_dtype


@triton.jit
def _box_level(x1, y1, x2, y2, k_min, k_max, canonical_level, log2_canonical_scale, NUM_LEVELS: tl.constexpr):
    """floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), clamped, minus k_min."""
    if NUM_LEVELS == 1:
        level = 0
    else:
        area = (x2 - x1) * (y2 - y1)
        # Empty boxes go to the finest level, as log2(0) = -inf does in torchvision.
        area = tl.maximum(area.to(tl.float32), 1e-30)
        lvl = tl.floor(canonical_level + 0.5 * tl.log2(area) - log2_canonical_scale + 1e-6)
        level = (tl.minimum(tl.maximum(lvl, k_min), k_max) - k_min).to(tl.int32)
    return level


@triton.jit
def _bilinear(y, x, height, width, ACC: tl.constexpr):
    """torchvision's RoIAlign bilinear sample: flat offsets of the 4 neighbours and their weights
    (all weights 0 for points more than one pixel outside the map)."""
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y = tl.maximum(y, 0.0)
    x = tl.maximum(x, 0.0)
    y_low = y.to(tl.int32)
    x_low = x.to(tl.int32)
    y_top = y_low >= height - 1
    x_top = x_low >= width - 1
    y_low = tl.where(y_top, height - 1, y_low)
    x_low = tl.where(x_top, width - 1, x_low)
    y = tl.where(y_top, y_low.to(ACC), y)
    x = tl.where(x_top, x_low.to(ACC), x)
    y_high = tl.where(y_top, y_low, y_low + 1)
    x_high = tl.where(x_top, x_low, x_low + 1)
    ly = y - y_low.to(ACC)
    lx = x - x_low.to(ACC)
    hy = 1.0 - ly
    hx = 1.0 - lx
    keep = tl.where(outside, 0.0, 1.0).to(ACC)
    return (y_low * width + x_low, y_low * width + x_high, y_high * width + x_low, y_high * width + x_high,
            hy * hx * keep, hy * lx * keep, ly * hx * keep, ly * lx * keep, outside)


@triton.jit(do_not_specialize=["h0", "h1", "h2", "h3", "h4", "h5", "w0", "w1", "w2", "w3", "w4", "w5"])
def _roi_align_kernel(
    p0, p1, p2, p3, p4, p5, h0, h1, h2, h3, h4, h5, w0, w1, w2, w3, w4, w5, s0, s1, s2, s3, s4, s5,
    rois_ptr, grad_out_ptr, out_ptr,
    channels, k_min, k_max, canonical_level, log2_canonical_scale,
    POOLED_H: tl.constexpr, POOLED_W: tl.constexpr, SAMPLING: tl.constexpr, ALIGNED: tl.constexpr,
    NUM_LEVELS: tl.constexpr, DTYPE: tl.constexpr, ACC: tl.constexpr, BACKWARD: tl.constexpr,
    BINS_FAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, CHANNELS_LAST: tl.constexpr = False,
):
    box = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    roi = rois_ptr + box * 5
    batch = tl.load(roi).to(tl.int64)
    x1 = tl.load(roi + 1).to(ACC)
    y1 = tl.load(roi + 2).to(ACC)
    x2 = tl.load(roi + 3).to(ACC)
    y2 = tl.load(roi + 4).to(ACC)
    level = _box_level(x1, y1, x2, y2, k_min, k_max, canonical_level, log2_canonical_scale, NUM_LEVELS)
    height = pick(level, h0, h1, h2, h3, h4, h5)
    width = pick(level, w0, w1, w2, w3, w4, w5)
    scale = pick(level, s0, s1, s2, s3, s4, s5).to(ACC)
    level_ptr = pick(level, p0, p1, p2, p3, p4, p5)

    offset = 0.5 if ALIGNED else 0.0
    start_w = x1 * scale - offset
    start_h = y1 * scale - offset
    roi_w = x2 * scale - offset - start_w
    roi_h = y2 * scale - offset - start_h
    if not ALIGNED:
        roi_w = tl.maximum(roi_w, 1.0)
        roi_h = tl.maximum(roi_h, 1.0)
    bin_h = roi_h / POOLED_H
    bin_w = roi_w / POOLED_W
    if SAMPLING > 0:
        grid_h = SAMPLING
        grid_w = SAMPLING
    else:
        grid_h = tl.ceil(roi_h / POOLED_H).to(tl.int32)
        grid_w = tl.ceil(roi_w / POOLED_W).to(tl.int32)
    count = tl.maximum(grid_h * grid_w, 1).to(ACC)

    p = tl.arange(0, BLOCK_P)
    pmask = p < POOLED_H * POOLED_W
    ph = (p // POOLED_W).to(ACC)
    pw = (p % POOLED_W).to(ACC)
    if CHANNELS_LAST:  # the level is [N, H, W, C] (the backward's gradient buffers): pixel o, channel c
        pixels = batch * height * width
        plane = c.to(tl.int64)
    else:
        plane = (batch * channels + c.to(tl.int64)) * height * width  # [BLOCK_C]
    c64 = c.to(tl.int64) * (POOLED_H * POOLED_W)
    # BINS_FAST: [BLOCK_C, BLOCK_P] tiles with the bins fastest (neighbouring lanes sample neighbouring pixels of
    # one channel plane: coalesced atomics); else [BLOCK_P, BLOCK_C] tiles with the channels fastest.
    if BINS_FAST:
        mask = cmask[:, None] & pmask[None, :]
        out_offs = box * channels * (POOLED_H * POOLED_W) + c64[:, None] + p[None, :]
    else:
        mask = pmask[:, None] & cmask[None, :]
        out_offs = box * channels * (POOLED_H * POOLED_W) + c64[None, :] + p[:, None]

    if BACKWARD:
        grad_base = level_ptr
        g = tl.load(grad_out_ptr + out_offs, mask=mask, other=0.0).to(ACC) / count
    else:
        feat_base = level_ptr
        if BINS_FAST:
            acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
        else:
            acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for iy in range(0, grid_h):
        y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
        for ix in range(0, grid_w):
            x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
            o1, o2, o3, o4, f1, f2, f3, f4, outside = _bilinear(y, x, height, width, ACC)
            if BINS_FAST:
                q1 = plane[:, None] + o1[None, :]
                q2 = plane[:, None] + o2[None, :]
                q3 = plane[:, None] + o3[None, :]
                q4 = plane[:, None] + o4[None, :]
                u1 = f1[None, :]
                u2 = f2[None, :]
                u3 = f3[None, :]
                u4 = f4[None, :]
                m = mask & ~outside[None, :]
            elif CHANNELS_LAST:  # neighbouring lanes: neighbouring channels of one pixel, one memory line
                q1 = plane[None, :] + (pixels + o1.to(tl.int64))[:, None] * channels
                q2 = plane[None, :] + (pixels + o2.to(tl.int64))[:, None] * channels
                q3 = plane[None, :] + (pixels + o3.to(tl.int64))[:, None] * channels
                q4 = plane[None, :] + (pixels + o4.to(tl.int64))[:, None] * channels
                u1 = f1[:, None]
                u2 = f2[:, None]
                u3 = f3[:, None]
                u4 = f4[:, None]
                m = mask & ~outside[:, None]
            else:
                q1 = plane[None, :] + o1[:, None]
                q2 = plane[None, :] + o2[:, None]
                q3 = plane[None, :] + o3[:, None]
                q4 = plane[None, :] + o4[:, None]
                u1 = f1[:, None]
                u2 = f2[:, None]
                u3 = f3[:, None]
                u4 = f4[:, None]
                m = mask & ~outside[:, None]
            if BACKWARD:
                # relaxed: no ordering is needed between these adds (a plain reduction, not a fenced atomic)
                tl.atomic_add(grad_base + q1, g * u1, mask=m, sem="relaxed")
                tl.atomic_add(grad_base + q2, g * u2, mask=m, sem="relaxed")
                tl.atomic_add(grad_base + q3, g * u3, mask=m, sem="relaxed")
                tl.atomic_add(grad_base + q4, g * u4, mask=m, sem="relaxed")
            else:
                v1 = tl.load(feat_base + q1, mask=mask, other=0.0).to(ACC)
                v2 = tl.load(feat_base + q2, mask=mask, other=0.0).to(ACC)
                v3 = tl.load(feat_base + q3, mask=mask, other=0.0).to(ACC)
                v4 = tl.load(feat_base + q4, mask=mask, other=0.0).to(ACC)
                acc += u1 * v1 + u2 * v2 + u3 * v3 + u4 * v4
    if not BACKWARD:
        tl.store(out_ptr + out_offs, (acc / count).to(DTYPE), mask=mask)


# The backward's atomics: into [N, H, W, C] buffers with the channels fastest across lanes (each warp adds to
# one 128-byte line per sample corner), or into the [N, C, H, W] gradients with the bins fastest.
GRAD_CHANNELS_LAST = True

_FWD_CONFIGS = autotune_configs(
    [triton.Config({"BINS_FAST": bins_fast, "BLOCK_C": block_c}, num_warps=nw)
     for bins_fast in (False, True) for block_c in (32, 64, 128) for nw in (4, 8)],
    triton.Config({"BINS_FAST": True, "BLOCK_C": 256}, num_warps=4),
)
# The forward only writes its output, so it can be autotuned (per channel count and level set); the backward
# accumulates with atomics (a benchmark run would add twice), so it has one fixed layout: bins fastest.
_roi_align_fwd = triton.autotune(configs=_FWD_CONFIGS, key=["channels", "NUM_LEVELS", "SAMPLING"])(_roi_align_kernel)


def _launch(levels, rois, grad_out, out, channels, num_boxes, config, dtype, acc, backward, channels_last=False):
    output_size, sampling_ratio, aligned, k_min, k_max, canonical_level, log2_scale, scales = config
    args = (*level_args(levels), *pad_levels([f.shape[2] for f in levels], 1), *pad_levels([f.shape[3] for f in levels], 1),
            *pad_levels([float(x) for x in scales], 1.0), rois, grad_out, out,
            channels, float(k_min), float(k_max), canonical_level, log2_scale)
    constexprs = dict(POOLED_H=output_size[0], POOLED_W=output_size[1], SAMPLING=max(sampling_ratio, 0),
                      ALIGNED=aligned, NUM_LEVELS=len(levels), DTYPE=tl_dtype(dtype), ACC=acc, BACKWARD=backward,
                      BLOCK_P=max(16, triton.next_power_of_2(output_size[0] * output_size[1])))
    if backward:
        # Small channel blocks give the GPU more programs; the CPU interpreter pays per program: wide ones.
        block_c = min(64 if rois.is_cuda else 256, max(16, triton.next_power_of_2(channels)))
        _roi_align_kernel[(num_boxes, triton.cdiv(channels, block_c))](
            *args, **constexprs, BINS_FAST=not channels_last, BLOCK_C=block_c, CHANNELS_LAST=channels_last,
            num_warps=4)
    else:
        _roi_align_fwd[lambda meta: (num_boxes, triton.cdiv(channels, meta["BLOCK_C"]))](*args, **constexprs)


class MultiScaleRoIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rois, scales, output_size, sampling_ratio, canonical_scale, canonical_level, aligned, *features):
        features = [f.contiguous() for f in features]
        dtype, device = features[0].dtype, features[0].device
        channels = features[0].shape[1]
        if any(f.dtype != dtype or f.device != device or f.shape[1] != channels for f in features):
            raise ValueError("features should share one dtype, device and channel count")
        acc, acc_torch = acc_dtypes(dtype)
        rois = rois.to(device=device, dtype=acc_torch).contiguous()
        num_boxes = rois.shape[0]
        config = (output_size, sampling_ratio, aligned, round(-math.log2(scales[0])), round(-math.log2(scales[-1])),
                  float(canonical_level), math.log2(canonical_scale), list(scales))
        out = torch.empty(num_boxes, channels, *output_size, dtype=dtype, device=device)
        if out.numel() > 0:
            _launch(features, rois, out, out, channels, num_boxes, config, dtype, acc, False)
        ctx.save_for_backward(rois)
        ctx.config = config
        ctx.shapes = [f.shape for f in features]
        ctx.dtype = dtype
        ctx.channels_last = GRAD_CHANNELS_LAST  # the backward's layout, chosen when the graph is built
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (rois,) = ctx.saved_tensors
        acc, acc_torch = acc_dtypes(ctx.dtype)
        if ctx.channels_last:  # [N, H, W, C] buffers, returned as channels-last views of [N, C, H, W]
            # (the kernel takes the views: their shapes give H and W, their data pointers the buffers)
            grads = [torch.zeros(n, h, w, c, dtype=acc_torch, device=grad_out.device).permute(0, 3, 1, 2)
                     for n, c, h, w in ctx.shapes]
        else:
            grads = [torch.zeros(shape, dtype=acc_torch, device=grad_out.device) for shape in ctx.shapes]
        if grad_out.numel() > 0:
            _launch(grads, rois, grad_out.contiguous(), grad_out, grad_out.shape[1], grad_out.shape[0], ctx.config,
                    ctx.dtype, acc, True, ctx.channels_last)
        return (None, None, None, None, None, None, None, *(g.to(ctx.dtype) for g in grads))


def multiscale_roi_align_triton(
    features: Sequence[Tensor], rois: Tensor, scales: Sequence[float], output_size: tuple[int, int],
    sampling_ratio: int, canonical_scale: float, canonical_level: float, aligned: bool,
) -> Tensor:
    """Kernel path of :func:`aco_kernels.multiscale_roi_align` (arguments already validated)."""
    return MultiScaleRoIAlignFunction.apply(rois, list(scales), output_size, sampling_ratio, canonical_scale,
                                            canonical_level, aligned, *features)
