"""Fused density-target rendering: per-class truncated Gaussians, each instance summing to 1 on the map.

Instances are sorted by (image, class) plane; one program per block of pixels of one plane walks that
plane's instances (often none), so every output pixel is written exactly once, in a fixed order
(deterministic, no atomics). An instance's normaliser is the product of its two 1-D truncated sums
(the Gaussian and its square window are separable), computed in the program from the map size alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference import density_params


@triton.jit
def _axis_sum(center, radius, inv_two_var, length, NORM_BLOCK: tl.constexpr):
    """Sum over pixel centres ``i + 0.5`` in [0, length) of the truncated 1-D Gaussian."""
    total = tl.zeros((), tl.float32)
    for start in range(0, length, NORM_BLOCK):
        idx = start + tl.arange(0, NORM_BLOCK)
        d = (idx.to(tl.float32) + 0.5) - center
        inside = (idx < length) & (tl.abs(d) <= radius)
        total += tl.sum(tl.where(inside, tl.exp(-(d * d) * inv_two_var), 0.0), axis=0)
    return total


@triton.jit
def _density_render_kernel(
    params_ptr, offsets_ptr, out_ptr, height, width, n_blocks, truncate,
    BLOCK: tl.constexpr, NORM_BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    plane = pid // n_blocks
    offs = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < height * width
    py = (offs // width).to(tl.float32) + 0.5
    px = (offs % width).to(tl.float32) + 0.5
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    first = tl.load(offsets_ptr + plane)
    last = tl.load(offsets_ptr + plane + 1)
    for k in range(first, last):
        cx = tl.load(params_ptr + 3 * k)
        cy = tl.load(params_ptr + 3 * k + 1)
        sigma = tl.load(params_ptr + 3 * k + 2)
        radius = truncate * sigma
        inv_two_var = 1.0 / (2.0 * sigma * sigma)
        norm = _axis_sum(cx, radius, inv_two_var, width, NORM_BLOCK) * _axis_sum(
            cy, radius, inv_two_var, height, NORM_BLOCK)
        dx = px - cx
        dy = py - cy
        gx = tl.where(tl.abs(dx) <= radius, tl.exp(-(dx * dx) * inv_two_var), 0.0)
        gy = tl.where(tl.abs(dy) <= radius, tl.exp(-(dy * dy) * inv_two_var), 0.0)
        acc += gx * gy * (1.0 / norm)
    tl.store(out_ptr + plane * height * width + offs, acc, mask=mask)


def density_render_triton(
    centers: Tensor, sizes: Tensor, labels: Tensor, batch_index: Tensor, num_images: int, num_classes: int,
    map_size: tuple[int, int], stride: float, sigma_scale: float, min_sigma: float, truncate: float,
) -> Tensor:
    """Kernel path of :func:`aco_kernels.density_render` (arguments already validated)."""
    height, width = map_size
    n_planes = num_images * num_classes
    device = centers.device
    out = torch.empty(num_images, num_classes, height, width, dtype=torch.float32, device=device)
    if out.numel() == 0:
        return out
    # The sigma rule lives in one place (reference.density_params); the kernel only evaluates it.
    cx, cy, sigma = density_params(centers, sizes, map_size, stride, sigma_scale, min_sigma, truncate)
    plane = batch_index.to(torch.int64) * num_classes + labels.to(torch.int64)
    order = torch.argsort(plane, stable=True)
    params = torch.stack([cx, cy, sigma], dim=1)[order].contiguous()
    offsets = torch.zeros(n_planes + 1, dtype=torch.int64, device=device)
    # scatter_add_ rather than bincount: a fixed-size result, so no host sync (and CUDA-graph capturable).
    counts = torch.zeros(n_planes, dtype=torch.int64, device=device).scatter_add_(0, plane, torch.ones_like(plane))
    offsets[1:] = torch.cumsum(counts, dim=0)
    block = min(1024, max(16, triton.next_power_of_2(height * width)))
    n_blocks = triton.cdiv(height * width, block)
    norm_block = min(1024, max(16, triton.next_power_of_2(max(height, width))))
    _density_render_kernel[(n_planes * n_blocks,)](
        params, offsets, out, height, width, n_blocks, truncate, BLOCK=block, NORM_BLOCK=norm_block,
    )
    return out
