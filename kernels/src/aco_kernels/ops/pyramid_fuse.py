"""Fused pyramid fusion: bilinear resize (align_corners=False) of every level to one size + weighted sum.

Forward: one program per block of output pixels of one (batch, channel) plane reads the 4 neighbours on
every level and writes the sum once. Backward: the same walk scatters ``weight * bilinear weight * grad``
into each level's gradient with atomics (float32 buffers, float64 for float64 inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import acc_dtypes, pointer_table, tl_dtype


@triton.jit
def _source_index(dst, scale, size):
    """PyTorch's align_corners=False source index: low index, high index and the weight of the high one."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    low = tl.minimum(src.to(tl.int32), size - 1)
    high = tl.minimum(low + 1, size - 1)
    lam = tl.minimum(tl.maximum(src - low.to(tl.float32), 0.0), 1.0)
    return low, high, lam


@triton.jit
def _pyramid_fuse_kernel(
    ptr_table, size_table, param_table, grad_out_ptr, out_ptr,
    out_h, out_w, n_blocks,
    NUM_LEVELS: tl.constexpr, DTYPE: tl.constexpr, ACC: tl.constexpr, BACKWARD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    plane = pid // n_blocks
    offs = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < out_h * out_w
    oy = offs // out_w
    ox = offs % out_w
    if BACKWARD:
        g = tl.load(grad_out_ptr + plane * out_h * out_w + offs, mask=mask, other=0.0).to(ACC)
    else:
        acc = tl.zeros([BLOCK], dtype=ACC)
    for lvl in tl.static_range(NUM_LEVELS):
        h = tl.load(size_table + 2 * lvl)
        w = tl.load(size_table + 2 * lvl + 1)
        scale_h = tl.load(param_table + 3 * lvl)
        scale_w = tl.load(param_table + 3 * lvl + 1)
        weight = tl.load(param_table + 3 * lvl + 2).to(ACC)
        y0, y1, ly = _source_index(oy, scale_h, h)
        x0, x1, lx = _source_index(ox, scale_w, w)
        ly = ly.to(ACC)
        lx = lx.to(ACC)
        w00 = (1.0 - ly) * (1.0 - lx)
        w01 = (1.0 - ly) * lx
        w10 = ly * (1.0 - lx)
        w11 = ly * lx
        row0 = plane * h * w + y0.to(tl.int64) * w
        row1 = plane * h * w + y1.to(tl.int64) * w
        if BACKWARD:
            base = tl.load(ptr_table + lvl).to(tl.pointer_type(ACC))
            gw = g * weight
            tl.atomic_add(base + row0 + x0, gw * w00, mask=mask)
            tl.atomic_add(base + row0 + x1, gw * w01, mask=mask)
            tl.atomic_add(base + row1 + x0, gw * w10, mask=mask)
            tl.atomic_add(base + row1 + x1, gw * w11, mask=mask)
        else:
            base = tl.load(ptr_table + lvl).to(tl.pointer_type(DTYPE))
            v00 = tl.load(base + row0 + x0, mask=mask, other=0.0).to(ACC)
            v01 = tl.load(base + row0 + x1, mask=mask, other=0.0).to(ACC)
            v10 = tl.load(base + row1 + x0, mask=mask, other=0.0).to(ACC)
            v11 = tl.load(base + row1 + x1, mask=mask, other=0.0).to(ACC)
            acc += weight * (w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11)
    if not BACKWARD:
        tl.store(out_ptr + plane * out_h * out_w + offs, acc.to(DTYPE), mask=mask)


def _tables(levels: Sequence[Tensor], size: tuple[int, int], weights: Sequence[float]):
    device = levels[0].device
    sizes = torch.tensor([[lv.shape[2], lv.shape[3]] for lv in levels], dtype=torch.int32, device=device)
    params = torch.tensor([[lv.shape[2] / size[0], lv.shape[3] / size[1], w] for lv, w in zip(levels, weights, strict=True)],
                          dtype=torch.float32, device=device)
    return sizes, params


def _launch(ptrs, sizes, params, grad_out, out, n_planes, size, num_levels, dtype, acc, backward):
    out_h, out_w = size
    block = min(1024, max(16, triton.next_power_of_2(out_h * out_w)))
    n_blocks = triton.cdiv(out_h * out_w, block)
    _pyramid_fuse_kernel[(n_planes * n_blocks,)](
        ptrs, sizes, params, grad_out, out, out_h, out_w, n_blocks,
        NUM_LEVELS=num_levels, DTYPE=tl_dtype(dtype), ACC=acc, BACKWARD=backward, BLOCK=block,
    )


class PyramidFuseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, size, weights, *levels):
        levels = [lv.contiguous() for lv in levels]
        dtype = levels[0].dtype
        if any(lv.dtype != dtype or lv.device != levels[0].device for lv in levels):
            raise ValueError("levels should share one dtype and device")
        batch, channels = levels[0].shape[:2]
        out = torch.empty(batch, channels, *size, dtype=dtype, device=levels[0].device)
        sizes, params = _tables(levels, size, weights)
        n_planes = batch * channels
        if out.numel() > 0 and all(lv.numel() > 0 for lv in levels):
            _launch(pointer_table(levels, out.device), sizes, params, out, out, n_planes, size, len(levels), dtype,
                    acc_dtypes(dtype)[0], False)
        elif out.numel() > 0:
            raise ValueError("levels should not be empty when the output is not")
        ctx.size = size
        ctx.shapes = [lv.shape for lv in levels]
        ctx.dtype = dtype
        ctx.save_for_backward(sizes, params)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        sizes, params = ctx.saved_tensors
        acc, acc_torch = acc_dtypes(ctx.dtype)
        grads = [torch.zeros(shape, dtype=acc_torch, device=grad_out.device) for shape in ctx.shapes]
        if grad_out.numel() > 0:
            batch, channels = grad_out.shape[:2]
            _launch(pointer_table(grads, grad_out.device), sizes, params, grad_out.contiguous(), grad_out,
                    batch * channels, ctx.size, len(grads), ctx.dtype, acc, True)
        return (None, None, *(g.to(ctx.dtype) for g in grads))


def pyramid_fuse_triton(levels: Sequence[Tensor], size: tuple[int, int], weights: Sequence[float]) -> Tensor:
    """Kernel path of :func:`aco_kernels.pyramid_fuse` (arguments already validated)."""
    return PyramidFuseFunction.apply(size, list(weights), *levels)
