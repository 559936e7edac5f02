"""Fused density-target rendering: per-class truncated Gaussians, each instance summing to 1 on the map.

One launch, nothing computed beforehand: one program per (image x class plane, group of ``TILES_H`` row
tiles) first asks, in one wide pass over the instances, whether its plane holds any. Most planes hold none
(20 products among 200 classes): those programs only store zeros, many rows each. Otherwise, for each 2-D
tile of its rows, it loads the instances' plane ids once more (``SCAN`` at a time, one wide load), then takes
the instances of its plane one by one, in index order, found in registers (the smallest index left in the
match mask: no memory round trip per instance), and adds each one's separable Gaussian ``gy gx^T`` (two 1-D
vectors and an outer product) to the tile. A plane holds about one instance, so a program's work is its
stores. Each output pixel is written once, in a fixed order: deterministic, no atomics, no sort, no host sync.

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

MAX_SCAN = 1024  # instances per wide load (more are walked in several)


@triton.jit
def _axis_sum(center, radius, inv_two_var, length, NORM_BLOCK: tl.constexpr):
    """The sum over pixel centres ``i + 0.5`` in [0, length) of one instance's truncated 1-D Gaussian."""
    total = tl.zeros((), tl.float32)
    for start in range(0, length, NORM_BLOCK):
        idx = start + tl.arange(0, NORM_BLOCK)
        d = (idx.to(tl.float32) + 0.5) - center
        inside = (idx < length) & (tl.abs(d) <= radius)
        total += tl.sum(tl.where(inside, tl.exp(-(d * d) * inv_two_var), 0.0), axis=0)
    return total


@triton.jit
def _gaussian(pos, center, radius, inv_two_var):
    """Truncated 1-D Gaussian of one instance at the pixel centres ``pos + 0.5``."""
    d = (pos.to(tl.float32) + 0.5) - center
    return tl.where(tl.abs(d) <= radius, tl.exp(-(d * d) * inv_two_var), 0.0)


@triton.jit
def _instance_tile(centers_ptr, sizes_ptr, i, x, y, height, width, inv_stride, sigma_scale, min_sigma, truncate,
                   NORM_BLOCK: tl.constexpr, SHORT_SIDE: tl.constexpr):
    """The [BLOCK_H, BLOCK_W] tile of instance ``i``'s normalised Gaussian."""
    # reference.density_params: centre / stride clamped into the map, sigma from the box area
    cx = tl.load(centers_ptr + 2 * i).to(tl.float32) * inv_stride
    cy = tl.load(centers_ptr + 2 * i + 1).to(tl.float32) * inv_stride
    cx = tl.minimum(tl.maximum(cx, 0.0), width * 1.0)  # width may be the constant 1 (specialised)
    cy = tl.minimum(tl.maximum(cy, 0.0), height * 1.0)
    bw = tl.maximum(tl.load(sizes_ptr + 2 * i).to(tl.float32), 0.0)
    bh = tl.maximum(tl.load(sizes_ptr + 2 * i + 1).to(tl.float32), 0.0)
    if SHORT_SIDE:  # the released DPSNet's rule (sigma_rule="short_side")
        side = tl.minimum(bw, bh)
    else:
        side = tl.sqrt(bw * bh)
    sigma = tl.maximum(sigma_scale * side * inv_stride, min_sigma)
    radius = truncate * sigma
    inv_two_var = 1.0 / (2.0 * sigma * sigma)
    norm = (_axis_sum(cx, radius, inv_two_var, width, NORM_BLOCK)
            * _axis_sum(cy, radius, inv_two_var, height, NORM_BLOCK))
    gx = _gaussian(x, cx, radius, inv_two_var) * (1.0 / norm)
    gy = _gaussian(y, cy, radius, inv_two_var)
    return gy[:, None] * gx[None, :]


_CONFIGS = autotune_configs(
    [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw, "TILES_H": th}, num_warps=nw)
     for bh, bw, th, nw in [(16, 128, 2, 4), (16, 128, 4, 4), (32, 128, 1, 4), (8, 128, 4, 4), (16, 128, 4, 8),
                            (32, 128, 2, 8), (8, 256, 2, 4), (16, 64, 4, 4), (64, 128, 1, 8), (4, 128, 8, 4)]],
    # the interpreter: small tiles, so that the CPU tests also walk the tile loops of a program
    triton.Config({"BLOCK_H": 16, "BLOCK_W": 16, "TILES_H": 2}, num_warps=4),
)


@triton.autotune(configs=_CONFIGS, key=["height", "width", "num_classes"])
@triton.jit
def _density_render_kernel(
    centers_ptr, sizes_ptr, labels_ptr, batch_ptr, out_ptr,
    num, num_classes, height, width, inv_stride, sigma_scale, min_sigma, truncate,
    NORM_BLOCK: tl.constexpr, SCAN: tl.constexpr, SHORT_SIDE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, TILES_H: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    image = plane // num_classes
    cls = plane % num_classes
    # Most planes hold no instance: one wide pass over the instances says so, and such a program only
    # stores zeros (its TILES_H x full-width rows, so that many bytes are in flight per scan).
    found = 0
    for start in range(0, num, SCAN):
        k = start + tl.arange(0, SCAN)
        kmask = k < num
        lab = tl.load(labels_ptr + k, mask=kmask, other=-1).to(tl.int64)
        img = tl.load(batch_ptr + k, mask=kmask, other=-1).to(tl.int64)
        found += tl.sum((kmask & (lab == cls) & (img == image)).to(tl.int32), axis=0)
    out_plane = out_ptr + plane * height * width
    for ty in range(0, TILES_H):
        y = (tl.program_id(1) * TILES_H + ty) * BLOCK_H + tl.arange(0, BLOCK_H)
        for x_start in range(0, width, BLOCK_W):
            x = x_start + tl.arange(0, BLOCK_W)
            acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
            if found > 0:
                for start in range(0, num, SCAN):
                    k = start + tl.arange(0, SCAN)
                    kmask = k < num
                    lab = tl.load(labels_ptr + k, mask=kmask, other=-1).to(tl.int64)
                    img = tl.load(batch_ptr + k, mask=kmask, other=-1).to(tl.int64)
                    match = kmask & (lab == cls) & (img == image)
                    for _ in range(0, tl.sum(match.to(tl.int32), axis=0)):
                        i = tl.min(tl.where(match, k, num), axis=0)  # the next instance of this plane
                        match = match & (k != i)
                        acc += _instance_tile(centers_ptr, sizes_ptr, i.to(tl.int64), x, y, height, width,
                                              inv_stride, sigma_scale, min_sigma, truncate, NORM_BLOCK,
                                              SHORT_SIDE)
            mask = (y < height)[:, None] & (x < width)[None, :]
            tl.store(out_plane + y[:, None] * width + x[None, :], acc, mask=mask)


def density_render_triton(
    centers: Tensor, sizes: Tensor, labels: Tensor, batch_index: Tensor, num_images: int, num_classes: int,
    map_size: tuple[int, int], stride: float, sigma_scale: float, min_sigma: float, truncate: float,
    sigma_rule: str = "area",
) -> Tensor:
    """Kernel path of :func:`aco_kernels.density_render` (arguments already validated)."""
    check_density_args(min_sigma, truncate, sigma_rule)
    height, width = map_size
    out = torch.empty(num_images, num_classes, height, width, dtype=torch.float32, device=centers.device)
    if out.numel() == 0:
        return out
    if centers.shape[0] == 0:
        return out.zero_()

    def grid(meta):
        return (num_images * num_classes, triton.cdiv(height, meta["BLOCK_H"] * meta["TILES_H"]))

    _density_render_kernel[grid](
        centers.contiguous(), sizes.contiguous(), labels.contiguous(), batch_index.contiguous(), out,
        centers.shape[0], num_classes, height, width, 1.0 / stride, float(sigma_scale), float(min_sigma),
        float(truncate), NORM_BLOCK=min(256, max(16, triton.next_power_of_2(max(height, width)))),
        SCAN=min(MAX_SCAN, max(16, triton.next_power_of_2(centers.shape[0]))), SHORT_SIDE=sigma_rule == "short_side",
    )
    return out
