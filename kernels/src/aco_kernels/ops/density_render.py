"""Fused density-target rendering: per-class truncated Gaussians, each instance summing to 1 on the map.

One launch, nothing computed beforehand: one program per (image x class plane, 2-D tile of map pixels)
scans the instances in chunks of ``KB``, keeps those of its plane and, when a chunk holds any, evaluates
their 1-D Gaussians along the tile's rows and columns (the Gaussian and its square window are separable)
and adds ``gy^T @ gx`` (a [BLOCK_H, KB] x [KB, BLOCK_W] product in full fp32) to the tile. Each output pixel
is written once, in a fixed order: deterministic, no atomics, no sort, no host sync.

The centre and sigma follow ``reference.density_params`` (the toolkit's one sigma rule), evaluated in the
program; an instance's normaliser is the product of its two 1-D truncated sums over the whole map.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference import check_density_args
from ._common import autotune_configs


@triton.jit
def _axis_sums(center, radius, inv_two_var, length, KB: tl.constexpr, NORM_BLOCK: tl.constexpr):
    """Per instance, the sum over pixel centres ``i + 0.5`` in [0, length) of its truncated 1-D Gaussian."""
    total = tl.zeros([KB], tl.float32)
    for start in range(0, length, NORM_BLOCK):
        idx = start + tl.arange(0, NORM_BLOCK)
        d = (idx.to(tl.float32) + 0.5)[None, :] - center[:, None]
        inside = (idx < length)[None, :] & (tl.abs(d) <= radius[:, None])
        total += tl.sum(tl.where(inside, tl.exp(-(d * d) * inv_two_var[:, None]), 0.0), axis=1)
    return total


@triton.jit
def _gaussians(pos, center, radius, inv_two_var, scale):
    """[KB, N] truncated Gaussian of each instance at the pixel centres ``pos + 0.5``, times ``scale``."""
    d = (pos.to(tl.float32) + 0.5)[None, :] - center[:, None]
    g = tl.where(tl.abs(d) <= radius[:, None], tl.exp(-(d * d) * inv_two_var[:, None]), 0.0)
    return g * scale[:, None]


_CONFIGS = autotune_configs([
    triton.Config({"BLOCK_H": bh, "BLOCK_W": bw}, num_warps=nw)
    for bh, bw, nw in [(32, 32, 4), (16, 64, 4), (32, 64, 4), (64, 64, 8), (16, 128, 4)]
])


@triton.autotune(configs=_CONFIGS, key=["height", "width", "num_classes"])
@triton.jit
def _density_render_kernel(
    centers_ptr, sizes_ptr, labels_ptr, batch_ptr, out_ptr,
    num, num_classes, height, width, inv_stride, sigma_scale, min_sigma, truncate,
    KB: tl.constexpr, NORM_BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    image = plane // num_classes
    cls = plane % num_classes
    tiles_w = tl.cdiv(width, BLOCK_W)
    y = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    x = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for start in range(0, num, KB):
        k = start + tl.arange(0, KB)
        kmask = k < num
        lab = tl.load(labels_ptr + k, mask=kmask, other=-1).to(tl.int64)
        img = tl.load(batch_ptr + k, mask=kmask, other=-1).to(tl.int64)
        match = kmask & (lab == cls) & (img == image)
        if tl.max(match.to(tl.int32), axis=0) > 0:
            # reference.density_params: centre / stride clamped into the map, sigma from the box area
            cx = tl.load(centers_ptr + 2 * k, mask=match, other=0.0).to(tl.float32) * inv_stride
            cy = tl.load(centers_ptr + 2 * k + 1, mask=match, other=0.0).to(tl.float32) * inv_stride
            cx = tl.minimum(tl.maximum(cx, 0.0), width * 1.0)  # width may be the constant 1 (specialised)
            cy = tl.minimum(tl.maximum(cy, 0.0), height * 1.0)
            bw = tl.maximum(tl.load(sizes_ptr + 2 * k, mask=match, other=0.0).to(tl.float32), 0.0)
            bh = tl.maximum(tl.load(sizes_ptr + 2 * k + 1, mask=match, other=0.0).to(tl.float32), 0.0)
            sigma = tl.maximum(sigma_scale * tl.sqrt(bw * bh) * inv_stride, min_sigma)
            radius = truncate * sigma
            inv_two_var = 1.0 / (2.0 * sigma * sigma)
            norm = (_axis_sums(cx, radius, inv_two_var, width, KB, NORM_BLOCK)
                    * _axis_sums(cy, radius, inv_two_var, height, KB, NORM_BLOCK))
            scale = tl.where(match, 1.0 / norm, 0.0)
            gx = _gaussians(x, cx, radius, inv_two_var, scale)  # [KB, BLOCK_W], normalised
            gy = _gaussians(y, cy, radius, inv_two_var, tl.where(match, 1.0, 0.0))  # [KB, BLOCK_H]
            acc += tl.dot(tl.trans(gy), gx, input_precision="ieee")
    mask = (y < height)[:, None] & (x < width)[None, :]
    tl.store(out_ptr + plane * height * width + y[:, None] * width + x[None, :], acc, mask=mask)


def density_render_triton(
    centers: Tensor, sizes: Tensor, labels: Tensor, batch_index: Tensor, num_images: int, num_classes: int,
    map_size: tuple[int, int], stride: float, sigma_scale: float, min_sigma: float, truncate: float,
) -> Tensor:
    """Kernel path of :func:`aco_kernels.density_render` (arguments already validated)."""
    check_density_args(min_sigma, truncate)
    height, width = map_size
    out = torch.empty(num_images, num_classes, height, width, dtype=torch.float32, device=centers.device)
    if out.numel() == 0:
        return out
    if centers.shape[0] == 0:
        return out.zero_()

    def grid(meta):
        return (num_images * num_classes, triton.cdiv(height, meta["BLOCK_H"]) * triton.cdiv(width, meta["BLOCK_W"]))

    _density_render_kernel[grid](
        centers.contiguous(), sizes.contiguous(), labels.contiguous(), batch_index.contiguous(), out,
        centers.shape[0], num_classes, height, width, 1.0 / stride, float(sigma_scale), float(min_sigma),
        float(truncate), KB=16, NORM_BLOCK=min(256, max(16, triton.next_power_of_2(max(height, width)))),
    )
    return out
