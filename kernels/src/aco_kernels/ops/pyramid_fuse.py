"""Fused pyramid fusion: bilinear resize (align_corners=False) of every level to one size + weighted sum.

Forward: one program per (batch x channel plane, strip of output rows x columns) walks its rows in order; a
level at the output size is one plain row load, each coarser level keeps the two x-interpolated source rows
the output row lies between and loads a new one when the output row moves onto it. Measured and not kept: the
2-D tile forward (4 gathered loads per coarser level and pixel; 0.842 against 0.699 ms of device time on an
H100, 0.810 against 0.521 on an H200, P2-P6 to 200x200, B=8, C=256: benchmarks/RESULTS*.md), groups of planes
per program (0.754 against 0.646 ms forward, 1.761 against 1.669 forward+backward on an H200), and predicated
loads of the new rows instead of branches (13% slower on an H100).

Backward, without atomics (so deterministic): the gradient of a level is the transpose of its separable
interpolation, ``grad_l = w_l * A_h^T G A_w`` with ``A`` the per-axis bilinear matrices (two non-zeros per
row). The y pass (``A_h^T G``, into float32 rows) runs first, the x pass on that smaller array. When every
level is upsampled or equal in y (a feature pyramid), one kernel does the y pass of all levels in one read
of ``G``, each program walking a strip of ``G``'s rows (plus a halo) and storing the source rows it owns;
otherwise one gather pass per level and axis, each output element summing the few target rows/columns that
sample it with the forward's own weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import acc_dtypes, autotune_configs, level_args, pad_levels, pick

# The backward: True, one y pass over the output gradient for every level (when every level is upsampled
# or equal in y, as in a feature pyramid), else one y pass per level; each level's x pass follows.
FUSED_BACKWARD = True
# The rows kernels load the next row of the level at the output size (forward) or of the gradient (backward)
# while the current one is summed (a software pipeline: two rows in flight per program); False: one at a time.
PREFETCH = True
# The forward also loads, per coarser level, the source row after its bottom one as soon as it moves onto a new
# row, so that the load is in flight over the output rows until that row is needed (not yet timed on a GPU:
# off by default; the benchmarks time it as "coarse rows prefetched too").
PREFETCH_COARSE = False


@triton.jit
def _source_index(dst, scale, size):
    """PyTorch's align_corners=False source index: low index, high index and the weight of the high one."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    low = tl.minimum(src.to(tl.int32), size - 1)
    high = tl.minimum(low + 1, size - 1)
    lam = tl.minimum(tl.maximum(src - low.to(tl.float32), 0.0), 1.0)
    return low, high, lam


@triton.jit
def _x_row(base, row, x0, x1, lx, mask, w, ACC: tl.constexpr):
    """Source row ``row`` of one level (``base``: [BLOCK_C, 1] plane pointers), interpolated along x at the
    output columns whose source indices are ``x0``/``x1``/``lx`` ([1, BLOCK_W]): [BLOCK_C, BLOCK_W]."""
    v0 = tl.load(base + row * w + x0, mask=mask, other=0.0).to(ACC)
    v1 = tl.load(base + row * w + x1, mask=mask, other=0.0).to(ACC)
    return v0 + (v1 - v0) * lx.to(ACC)


@triton.jit
def _level_row(lvl: tl.constexpr, acc, cached, top, bottom, n0, n1, oy, ox, mask, plane,
               p0, p1, p2, p3, p4, p5, h0, h1, h2, h3, h4, h5, w0, w1, w2, w3, w4, w5,
               sh0, sh1, sh2, sh3, sh4, sh5, sw0, sw1, sw2, sw3, sw4, sw5, k0, k1, k2, k3, k4, k5,
               NUM_LEVELS: tl.constexpr, IDENTITY: tl.constexpr, ACC: tl.constexpr, PRELOADED: tl.constexpr,
               COARSE_PREFETCH: tl.constexpr):
    """Add level ``lvl``'s contribution to output row ``oy`` of the planes ``plane`` ([BLOCK_C, 1]) at the
    columns ``ox`` ([1, BLOCK_W]). A coarser level keeps its two x-interpolated source rows (``top``: row
    ``cached``, ``bottom``: the next) from one output row to the next and loads a new source row only when the
    output row moves onto it: once per 2^l output rows. ``PRELOADED``: the level at the output size was added
    by the caller (prefetched). ``COARSE_PREFETCH``: ``n0``/``n1`` hold the raw loads, at ``x0``/``x1``, of the
    source row after ``bottom``, issued when the level moved onto its current row and used (interpolated) at
    its next move, so that the load's latency is spread over the output rows in between."""
    if lvl < NUM_LEVELS:
        h = pick(lvl, h0, h1, h2, h3, h4, h5)
        w = pick(lvl, w0, w1, w2, w3, w4, w5)
        weight = pick(lvl, k0, k1, k2, k3, k4, k5).to(ACC)
        base = pick(lvl, p0, p1, p2, p3, p4, p5) + plane * h * w
        if lvl == IDENTITY:  # already at the output size: one plain row load
            if not PRELOADED:
                acc += weight * tl.load(base + oy * w + ox, mask=mask, other=0.0).to(ACC)
        else:
            # the same for every row: at the loop body's top level, where loop-invariant code motion hoists it
            x0, x1, lx = _source_index(ox, pick(lvl, sw0, sw1, sw2, sw3, sw4, sw5), w)
            y0, y1, ly = _source_index(oy, pick(lvl, sh0, sh1, sh2, sh3, sh4, sh5), h)
            if y0 != cached:
                if y0 == cached + 1:  # moved down one source row: the old bottom row is the new top
                    top = bottom
                    if COARSE_PREFETCH:  # the new bottom (row y1) was loaded at the previous move
                        bottom = n0.to(ACC) + (n1.to(ACC) - n0.to(ACC)) * lx.to(ACC)
                    else:
                        bottom = _x_row(base, y1, x0, x1, lx, mask, w, ACC)
                else:
                    top = _x_row(base, y0, x0, x1, lx, mask, w, ACC)
                    bottom = _x_row(base, y1, x0, x1, lx, mask, w, ACC)
                if COARSE_PREFETCH:  # the bottom row at the next move
                    after = tl.minimum(y1 + 1, h - 1)
                    n0 = tl.load(base + after * w + x0, mask=mask, other=0.0)
                    n1 = tl.load(base + after * w + x1, mask=mask, other=0.0)
                cached = y0
            acc += weight * (top + (bottom - top) * ly.to(ACC))
    return acc, cached, top, bottom, n0, n1


# one plane per program on a GPU (groups of planes per program measured slower on an H200: see the README)
_ROW_CONFIGS = autotune_configs([
    triton.Config({"BLOCK_C": 1, "BLOCK_H": bh, "BLOCK_W": bw}, num_warps=nw)
    for bh, bw, nw in [(16, 128, 4), (8, 128, 4), (32, 128, 4), (16, 64, 2), (32, 64, 2), (16, 128, 2),
                       (8, 64, 1), (4, 64, 1), (16, 64, 1), (8, 128, 1), (4, 128, 1), (8, 32, 1), (4, 32, 1),
                       (2, 64, 1)]
], triton.Config({"BLOCK_C": 8, "BLOCK_H": 16, "BLOCK_W": 64}, num_warps=2))
# (Under the interpreter, which pays per program, 8 planes per program: the BLOCK_C loop is tested on CPU, and
# the tests also run the GPU's one plane per program.)


@triton.jit
def _pyramid_fuse_rows_body(
    p0, p1, p2, p3, p4, p5, out_ptr,
    h0, h1, h2, h3, h4, h5, w0, w1, w2, w3, w4, w5,
    sh0, sh1, sh2, sh3, sh4, sh5, sw0, sw1, sw2, sw3, sw4, sw5, k0, k1, k2, k3, k4, k5,
    out_h, out_w, num_planes,
    NUM_LEVELS: tl.constexpr, IDENTITY: tl.constexpr, ACC: tl.constexpr,
    PREFETCH: tl.constexpr, COARSE_PREFETCH: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One program per (group of BLOCK_C planes, strip of BLOCK_H output rows x BLOCK_W columns), walking its
    rows in order. ``PREFETCH`` (only with a level at the output size): that level is loaded one row ahead."""
    planes = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    plane = planes.to(tl.int64)[:, None]
    tile = tl.program_id(1)
    tiles_w = tl.cdiv(out_w, BLOCK_W)
    y_start = (tile // tiles_w) * BLOCK_H
    ox1 = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    ox = ox1[None, :]
    xmask = (planes < num_planes)[:, None] & (ox1 < out_w)[None, :]
    # per coarser level: the source row held in `top` (-2: none yet) and the two rows
    c0 = tl.full((), -2, tl.int32)
    c1 = c0
    c2 = c0
    c3 = c0
    c4 = c0
    c5 = c0
    t0 = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)
    b0 = t0
    t1 = t0
    b1 = t0
    t2 = t0
    b2 = t0
    t3 = t0
    b3 = t0
    t4 = t0
    b4 = t0
    t5 = t0
    b5 = t0
    # per coarser level, the raw loads of the next source row (COARSE_PREFETCH), in the levels' dtype
    n00 = tl.zeros([BLOCK_C, BLOCK_W], dtype=out_ptr.dtype.element_ty)
    n01 = n00
    n10 = n00
    n11 = n00
    n20 = n00
    n21 = n00
    n30 = n00
    n31 = n00
    n40 = n00
    n41 = n00
    n50 = n00
    n51 = n00
    out_plane = out_ptr + plane * out_h * out_w
    n_rows = tl.minimum(BLOCK_H, out_h - y_start)
    if PREFETCH:
        ident = pick(IDENTITY, p0, p1, p2, p3, p4, p5) + plane * out_h * out_w
        ident_weight = pick(IDENTITY, k0, k1, k2, k3, k4, k5).to(ACC)
        following = tl.load(ident + y_start * out_w + ox, mask=xmask, other=0.0)
    for r in range(0, n_rows):
        oy = y_start + r
        if PREFETCH:
            current = following
            following = tl.load(ident + (oy + 1) * out_w + ox, mask=xmask & (r + 1 < n_rows), other=0.0)
            acc = ident_weight * current.to(ACC)
        else:
            acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)
        acc, c0, t0, b0, n00, n01 = _level_row(0, acc, c0, t0, b0, n00, n01, oy, ox, xmask, plane, p0, p1, p2, p3, p4, p5, h0, h1, h2,
                                     h3, h4, h5, w0, w1, w2, w3, w4, w5, sh0, sh1, sh2, sh3, sh4, sh5, sw0, sw1,
                                     sw2, sw3, sw4, sw5, k0, k1, k2, k3, k4, k5, NUM_LEVELS, IDENTITY, ACC, PREFETCH,
                                     COARSE_PREFETCH)
        acc, c1, t1, b1, n10, n11 = _level_row(1, acc, c1, t1, b1, n10, n11, oy, ox, xmask, plane, p0, p1, p2, p3, p4, p5, h0, h1, h2,
                                     h3, h4, h5, w0, w1, w2, w3, w4, w5, sh0, sh1, sh2, sh3, sh4, sh5, sw0, sw1,
                                     sw2, sw3, sw4, sw5, k0, k1, k2, k3, k4, k5, NUM_LEVELS, IDENTITY, ACC, PREFETCH,
                                     COARSE_PREFETCH)
        acc, c2, t2, b2, n20, n21 = _level_row(2, acc, c2, t2, b2, n20, n21, oy, ox, xmask, plane, p0, p1, p2, p3, p4, p5, h0, h1, h2,
                                     h3, h4, h5, w0, w1, w2, w3, w4, w5, sh0, sh1, sh2, sh3, sh4, sh5, sw0, sw1,
                                     sw2, sw3, sw4, sw5, k0, k1, k2, k3, k4, k5, NUM_LEVELS, IDENTITY, ACC, PREFETCH,
                                     COARSE_PREFETCH)
        acc, c3, t3, b3, n30, n31 = _level_row(3, acc, c3, t3, b3, n30, n31, oy, ox, xmask, plane, p0, p1, p2, p3, p4, p5, h0, h1, h2,
                                     h3, h4, h5, w0, w1, w2, w3, w4, w5, sh0, sh1, sh2, sh3, sh4, sh5, sw0, sw1,
                                     sw2, sw3, sw4, sw5, k0, k1, k2, k3, k4, k5, NUM_LEVELS, IDENTITY, ACC, PREFETCH,
                                     COARSE_PREFETCH)
        acc, c4, t4, b4, n40, n41 = _level_row(4, acc, c4, t4, b4, n40, n41, oy, ox, xmask, plane, p0, p1, p2, p3, p4, p5, h0, h1, h2,
                                     h3, h4, h5, w0, w1, w2, w3, w4, w5, sh0, sh1, sh2, sh3, sh4, sh5, sw0, sw1,
                                     sw2, sw3, sw4, sw5, k0, k1, k2, k3, k4, k5, NUM_LEVELS, IDENTITY, ACC, PREFETCH,
                                     COARSE_PREFETCH)
        acc, c5, t5, b5, n50, n51 = _level_row(5, acc, c5, t5, b5, n50, n51, oy, ox, xmask, plane, p0, p1, p2, p3, p4, p5, h0, h1, h2,
                                     h3, h4, h5, w0, w1, w2, w3, w4, w5, sh0, sh1, sh2, sh3, sh4, sh5, sw0, sw1,
                                     sw2, sw3, sw4, sw5, k0, k1, k2, k3, k4, k5, NUM_LEVELS, IDENTITY, ACC, PREFETCH,
                                     COARSE_PREFETCH)
        tl.store(out_plane + oy * out_w + ox, acc.to(out_ptr.dtype.element_ty), mask=xmask)


_pyramid_fuse_rows_kernel = triton.autotune(
    configs=_ROW_CONFIGS, key=["out_h", "out_w", "NUM_LEVELS", "PREFETCH", "COARSE_PREFETCH"])(
    _pyramid_fuse_rows_body)


_T_CONFIGS = autotune_configs([
    triton.Config({"BLOCK_A": ba, "BLOCK_B": bb}, num_warps=nw)
    for ba, bb, nw in [(16, 32, 4), (8, 64, 4), (16, 64, 4), (32, 64, 8), (8, 128, 4), (32, 32, 4), (16, 128, 8),
                       (4, 256, 4)]
])


@triton.autotune(configs=_T_CONFIGS, key=["n_keep", "t_len", "s_len", "LAST_AXIS"])
@triton.jit
def _interp_transpose_kernel(
    src_ptr, dst_ptr, n_keep, t_len, s_len, scale, span, weight,
    LAST_AXIS: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """Transpose of a 1-D bilinear resize (source length ``s_len`` -> target ``t_len``) along one axis.

    ``LAST_AXIS``: src [P, n_keep, t_len] -> dst [P, n_keep, s_len]; else src [P, t_len, n_keep] ->
    dst [P, s_len, n_keep]. ``dst[s] = weight * sum_t A[t, s] src[t]``, where the ``t`` sampling source
    index ``s`` lie in ``[t0(s), t0(s) + span)`` and ``A`` is recomputed with the forward's rule.
    """
    plane = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    if LAST_AXIS:
        tiles_b = tl.cdiv(s_len, BLOCK_B)
    else:
        tiles_b = tl.cdiv(n_keep, BLOCK_B)
    ia = (tile // tiles_b) * BLOCK_A + tl.arange(0, BLOCK_A)
    ib = (tile % tiles_b) * BLOCK_B + tl.arange(0, BLOCK_B)
    if LAST_AXIS:
        keep = ia
        s = ib
    else:
        s = ia
        keep = ib
    s_mask = s < s_len
    keep_mask = keep < n_keep
    # First target index whose source coordinate (t + 0.5) * scale - 0.5 exceeds s - 1, minus a margin.
    t0 = tl.maximum(tl.floor((s.to(tl.float32) - 0.5) / scale - 0.5).to(tl.int32) - 1, 0)
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=ACC)
    for k in range(0, span):
        t = t0 + k
        low, high, lam = _source_index(t, scale, s_len)
        lam = lam.to(ACC)
        w = tl.where(low == s, 1.0 - lam, 0.0) + tl.where(high == s, lam, 0.0)
        t_ok = (t < t_len) & s_mask
        w = tl.where(t_ok, w, 0.0)
        if LAST_AXIS:
            m = keep_mask[:, None] & t_ok[None, :]
            x = tl.load(src_ptr + plane * n_keep * t_len + keep[:, None] * t_len + t[None, :], mask=m, other=0.0)
            acc += x.to(ACC) * w[None, :]
        else:
            m = t_ok[:, None] & keep_mask[None, :]
            x = tl.load(src_ptr + plane * t_len * n_keep + t[:, None] * n_keep + keep[None, :], mask=m, other=0.0)
            acc += x.to(ACC) * w[:, None]
    acc = acc * weight
    if LAST_AXIS:
        offs = plane * n_keep * s_len + keep[:, None] * s_len + s[None, :]
        m = keep_mask[:, None] & s_mask[None, :]
    else:
        offs = plane * s_len * n_keep + s[:, None] * n_keep + keep[None, :]
        m = s_mask[:, None] & keep_mask[None, :]
    tl.store(dst_ptr + offs, acc.to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def _level_rows_bwd(lvl: tl.constexpr, g, t, c, a0, a1, lo, hi, plane, ox, xmask, out_h, out_w,
                    r0, r1, r2, r3, r4, r5, h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5,
                    NUM_LEVELS: tl.constexpr, IDENTITY: tl.constexpr, ACC: tl.constexpr):
    """Fold gradient row ``t`` into level ``lvl``'s y pass: ``a0`` accumulates source row ``c``, ``a1`` row
    ``c + 1``; when ``t`` moves on to row ``c + 1`` (upsampling: one row at a time), row ``c`` is complete and
    is stored if this program owns it (``lo < c <= hi``)."""
    if lvl < NUM_LEVELS:
        if lvl != IDENTITY:
            h = pick(lvl, h0, h1, h2, h3, h4, h5)
            rows = pick(lvl, r0, r1, r2, r3, r4, r5) + plane * h * out_w
            y0, y1, ly = _source_index(t, pick(lvl, sh0, sh1, sh2, sh3, sh4, sh5), h)
            moved = y0 != c
            tl.store(rows + c * out_w + ox, a0, mask=xmask & moved & (c > lo) & (c <= hi))
            a0 = tl.where(moved, a1, a0)
            a1 = tl.where(moved, 0.0, a1)
            c = y0
            ly = ly.to(ACC)
            both = y1 == y0  # the last source row: both weights go to it
            a0 += g * tl.where(both, 1.0, 1.0 - ly)
            a1 += g * tl.where(both, 0.0, ly)
    return c, a0, a1


@triton.jit
def _level_rows_flush(lvl: tl.constexpr, c, a0, a1, lo, hi, plane, ox, xmask, out_w,
                      r0, r1, r2, r3, r4, r5, h0, h1, h2, h3, h4, h5,
                      NUM_LEVELS: tl.constexpr, IDENTITY: tl.constexpr):
    """At the end of the walk: store the two rows still held, where owned."""
    if lvl < NUM_LEVELS:
        if lvl != IDENTITY:
            h = pick(lvl, h0, h1, h2, h3, h4, h5)
            rows = pick(lvl, r0, r1, r2, r3, r4, r5) + plane * h * out_w
            tl.store(rows + c * out_w + ox, a0, mask=xmask & (c > lo) & (c <= hi))
            tl.store(rows + (c + 1) * out_w + ox, a1, mask=xmask & (c + 1 > lo) & (c + 1 <= hi) & (c + 1 < h))


@triton.jit
def _owned(lvl: tl.constexpr, t_start, t_stop, h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5,
           NUM_LEVELS: tl.constexpr):
    """Source rows whose first gradient row lies in [t_start, t_stop): ``lo < s <= hi`` (``y1`` of the rows
    before the strip and of its last row)."""
    lo = -1
    hi = -1
    if lvl < NUM_LEVELS:
        h = pick(lvl, h0, h1, h2, h3, h4, h5)
        scale = pick(lvl, sh0, sh1, sh2, sh3, sh4, sh5)
        _, hi, _ = _source_index(t_stop - 1, scale, h)
        _, before, _ = _source_index(tl.maximum(t_start - 1, 0), scale, h)
        lo = tl.where(t_start > 0, before, -1)
    return lo, hi


_BWD_ROW_CONFIGS = autotune_configs([
    triton.Config({"BLOCK_C": 1, "BLOCK_T": bt, "BLOCK_W": bw}, num_warps=nw)
    for bt, bw, nw in [(64, 64, 1), (128, 64, 1), (32, 64, 1), (64, 128, 2), (128, 128, 2), (64, 128, 4),
                       (256, 64, 1), (64, 32, 1), (128, 256, 4)]
], triton.Config({"BLOCK_C": 8, "BLOCK_T": 8, "BLOCK_W": 32}, num_warps=1))  # interpreter: strips, halos walked


@triton.jit
def _pyramid_fuse_bwd_rows_body(
    g_ptr, r0, r1, r2, r3, r4, r5,
    h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5, identity_weight,
    out_h, out_w, halo, num_planes,
    NUM_LEVELS: tl.constexpr, IDENTITY: tl.constexpr, ACC: tl.constexpr,
    PREFETCH: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """The y pass of every level's backward in one read of the gradient (every level upsampled or equal in y).

    One program per (group of BLOCK_C planes, strip of BLOCK_T gradient rows x BLOCK_W columns) walks the
    strip's rows, and ``halo`` rows past it, once: the identity level's gradient row is written right away (``weight * g``);
    each coarser level accumulates its source rows ``A_h^T g`` in two registers rows and stores each row it owns
    (the source rows whose first gradient row lies in the strip) when the walk has moved past it. Every source
    row is stored once by one program: no atomics, deterministic.
    """
    planes = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    plane = planes.to(tl.int64)[:, None]
    tile = tl.program_id(1)
    tiles_w = tl.cdiv(out_w, BLOCK_W)
    t_start = (tile // tiles_w) * BLOCK_T
    t_stop = tl.minimum(t_start + BLOCK_T, out_h)
    ox1 = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    ox = ox1[None, :]
    xmask = (planes < num_planes)[:, None] & (ox1 < out_w)[None, :]
    g_plane = g_ptr + plane * out_h * out_w
    lo0, hi0 = _owned(0, t_start, t_stop, h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS)
    lo1, hi1 = _owned(1, t_start, t_stop, h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS)
    lo2, hi2 = _owned(2, t_start, t_stop, h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS)
    lo3, hi3 = _owned(3, t_start, t_stop, h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS)
    lo4, hi4 = _owned(4, t_start, t_stop, h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS)
    lo5, hi5 = _owned(5, t_start, t_stop, h0, h1, h2, h3, h4, h5, sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS)
    c0 = tl.full((), -1, tl.int32)  # the source row in a0 (-1: none yet; the first row moves onto its own)
    c1 = c0
    c2 = c0
    c3 = c0
    c4 = c0
    c5 = c0
    z = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)
    a00 = z
    a01 = z
    a10 = z
    a11 = z
    a20 = z
    a21 = z
    a30 = z
    a31 = z
    a40 = z
    a41 = z
    a50 = z
    a51 = z
    n_walk = tl.minimum(t_stop + halo, out_h) - t_start
    if PREFETCH:  # the gradient's rows loaded one ahead
        following = tl.load(g_plane + t_start * out_w + ox, mask=xmask, other=0.0)
    for i in range(0, n_walk):
        t = t_start + i
        if PREFETCH:
            g = following.to(ACC)
            following = tl.load(g_plane + (t + 1) * out_w + ox, mask=xmask & (i + 1 < n_walk), other=0.0)
        else:
            g = tl.load(g_plane + t * out_w + ox, mask=xmask, other=0.0).to(ACC)
        if IDENTITY >= 0:
            ident = pick(IDENTITY, r0, r1, r2, r3, r4, r5) + plane * out_h * out_w
            tl.store(ident + t * out_w + ox, (g * identity_weight).to(ident.dtype.element_ty),
                     mask=xmask & (t < t_stop))
        c0, a00, a01 = _level_rows_bwd(0, g, t, c0, a00, a01, lo0, hi0, plane, ox, xmask, out_h, out_w,
                                       r0, r1, r2, r3, r4, r5, h0, h1, h2, h3, h4, h5,
                                       sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS, IDENTITY, ACC)
        c1, a10, a11 = _level_rows_bwd(1, g, t, c1, a10, a11, lo1, hi1, plane, ox, xmask, out_h, out_w,
                                       r0, r1, r2, r3, r4, r5, h0, h1, h2, h3, h4, h5,
                                       sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS, IDENTITY, ACC)
        c2, a20, a21 = _level_rows_bwd(2, g, t, c2, a20, a21, lo2, hi2, plane, ox, xmask, out_h, out_w,
                                       r0, r1, r2, r3, r4, r5, h0, h1, h2, h3, h4, h5,
                                       sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS, IDENTITY, ACC)
        c3, a30, a31 = _level_rows_bwd(3, g, t, c3, a30, a31, lo3, hi3, plane, ox, xmask, out_h, out_w,
                                       r0, r1, r2, r3, r4, r5, h0, h1, h2, h3, h4, h5,
                                       sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS, IDENTITY, ACC)
        c4, a40, a41 = _level_rows_bwd(4, g, t, c4, a40, a41, lo4, hi4, plane, ox, xmask, out_h, out_w,
                                       r0, r1, r2, r3, r4, r5, h0, h1, h2, h3, h4, h5,
                                       sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS, IDENTITY, ACC)
        c5, a50, a51 = _level_rows_bwd(5, g, t, c5, a50, a51, lo5, hi5, plane, ox, xmask, out_h, out_w,
                                       r0, r1, r2, r3, r4, r5, h0, h1, h2, h3, h4, h5,
                                       sh0, sh1, sh2, sh3, sh4, sh5, NUM_LEVELS, IDENTITY, ACC)
    _level_rows_flush(0, c0, a00, a01, lo0, hi0, plane, ox, xmask, out_w, r0, r1, r2, r3, r4, r5,
                      h0, h1, h2, h3, h4, h5, NUM_LEVELS, IDENTITY)
    _level_rows_flush(1, c1, a10, a11, lo1, hi1, plane, ox, xmask, out_w, r0, r1, r2, r3, r4, r5,
                      h0, h1, h2, h3, h4, h5, NUM_LEVELS, IDENTITY)
    _level_rows_flush(2, c2, a20, a21, lo2, hi2, plane, ox, xmask, out_w, r0, r1, r2, r3, r4, r5,
                      h0, h1, h2, h3, h4, h5, NUM_LEVELS, IDENTITY)
    _level_rows_flush(3, c3, a30, a31, lo3, hi3, plane, ox, xmask, out_w, r0, r1, r2, r3, r4, r5,
                      h0, h1, h2, h3, h4, h5, NUM_LEVELS, IDENTITY)
    _level_rows_flush(4, c4, a40, a41, lo4, hi4, plane, ox, xmask, out_w, r0, r1, r2, r3, r4, r5,
                      h0, h1, h2, h3, h4, h5, NUM_LEVELS, IDENTITY)
    _level_rows_flush(5, c5, a50, a51, lo5, hi5, plane, ox, xmask, out_w, r0, r1, r2, r3, r4, r5,
                      h0, h1, h2, h3, h4, h5, NUM_LEVELS, IDENTITY)


_pyramid_fuse_bwd_rows_kernel = triton.autotune(
    configs=_BWD_ROW_CONFIGS, key=["out_h", "out_w", "NUM_LEVELS", "PREFETCH"])(_pyramid_fuse_bwd_rows_body)


def _identity_level(shapes, size) -> int:
    """Index of the first level already at the output size (-1 if none): the forward loads it directly."""
    return next((i for i, shape in enumerate(shapes) if tuple(shape[2:]) == tuple(size)), -1)


def _transpose_resize(src: Tensor, dst: Tensor, t_len: int, s_len: int, n_keep: int, last_axis: bool,
                      weight: float, acc) -> None:
    """dst = weight * (transpose of the bilinear resize s_len -> t_len) applied to src along one axis."""
    scale = s_len / t_len
    # Targets sampling source index s have source coordinates in (s - 1, s + 1): at most 2 / scale + 1 of
    # them; 2 more for the margin of t0 and one for rounding.
    span = math.ceil(2.0 / scale) + 4
    rows, cols = (n_keep, s_len) if last_axis else (s_len, n_keep)

    def grid(meta):
        return (src.shape[0], triton.cdiv(rows, meta["BLOCK_A"]) * triton.cdiv(cols, meta["BLOCK_B"]))

    _interp_transpose_kernel[grid](src, dst, n_keep, t_len, s_len, float(scale), span, float(weight),
                                   LAST_AXIS=last_axis, ACC=acc)


def _x_pass(rows: Tensor, grad: Tensor, out_w: int, weight: float, acc) -> None:
    """``grad`` [B, C, h, w] = ``weight`` times the x pass of the y pass's ``rows`` [B * C, h, out_w]."""
    h, w = grad.shape[2], grad.shape[3]
    if w != out_w:  # along x: [P, h, out_w] -> [P, h, w]
        _transpose_resize(rows, grad, out_w, w, h, True, weight, acc)
    else:
        grad.copy_(rows.view(grad.shape).to(acc_dtypes(grad.dtype)[1]) * weight)


def _fused_backward(grad_out: Tensor, shapes, weights, size, dtype, prefetch: bool) -> list[Tensor]:
    """Every level's gradient with one y pass over ``grad_out`` (all levels upsampled or equal in y), then
    each level's x pass on its [P, h, out_w] rows."""
    acc, acc_torch = acc_dtypes(dtype)
    out_h, out_w = size
    batch, channels = shapes[0][:2]
    identity = _identity_level(shapes, size)
    grads = [torch.empty(shape, dtype=dtype, device=grad_out.device) for shape in shapes]
    # the y pass's output per level: the identity level's gradient itself, else [P, h, out_w] rows
    rows = [grads[i] if i == identity else
            torch.empty(batch * channels, shape[2], out_w, dtype=acc_torch, device=grad_out.device)
            for i, shape in enumerate(shapes)]
    coarsest = max((out_h / shape[2] for i, shape in enumerate(shapes) if i != identity), default=1.0)
    # walked past a strip so that its last owned source rows are complete (see the kernel)
    halo = math.ceil(2.0 * coarsest) + 2

    def grid(meta):
        return (triton.cdiv(batch * channels, meta["BLOCK_C"]),
                triton.cdiv(out_h, meta["BLOCK_T"]) * triton.cdiv(out_w, meta["BLOCK_W"]))

    _pyramid_fuse_bwd_rows_kernel[grid](
        grad_out, *level_args(rows), *pad_levels([shape[2] for shape in shapes], 1),
        *pad_levels([shape[2] / out_h for shape in shapes], 1.0),
        float(weights[identity]) if identity >= 0 else 0.0, out_h, out_w, halo, batch * channels,
        NUM_LEVELS=len(shapes), IDENTITY=identity, ACC=acc, PREFETCH=prefetch,
    )
    for i, weight in enumerate(weights):
        if i != identity:
            _x_pass(rows[i], grads[i], out_w, weight, acc)
    return grads


class PyramidFuseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, size, weights, *levels):
        levels = [lv.contiguous() for lv in levels]
        dtype = levels[0].dtype
        if any(lv.dtype != dtype or lv.device != levels[0].device for lv in levels):
            raise ValueError("levels should share one dtype and device")
        batch, channels = levels[0].shape[:2]
        out = torch.empty(batch, channels, *size, dtype=dtype, device=levels[0].device)
        if out.numel() > 0 and all(lv.numel() > 0 for lv in levels):
            n = len(levels)

            def grid(meta):
                return (triton.cdiv(batch * channels, meta["BLOCK_C"]),
                        triton.cdiv(size[0], meta["BLOCK_H"]) * triton.cdiv(size[1], meta["BLOCK_W"]))

            identity = _identity_level([lv.shape for lv in levels], size)
            _pyramid_fuse_rows_kernel[grid](
                *level_args(levels), out,
                *pad_levels([lv.shape[2] for lv in levels], 1), *pad_levels([lv.shape[3] for lv in levels], 1),
                *pad_levels([lv.shape[2] / size[0] for lv in levels], 1.0),
                *pad_levels([lv.shape[3] / size[1] for lv in levels], 1.0),
                *pad_levels([float(w) for w in weights], 0.0),
                size[0], size[1], batch * channels,
                NUM_LEVELS=n, IDENTITY=identity, ACC=acc_dtypes(dtype)[0],
                PREFETCH=PREFETCH and identity >= 0, COARSE_PREFETCH=PREFETCH_COARSE,
            )
        elif out.numel() > 0:
            raise ValueError("levels should not be empty when the output is not")
        ctx.size = size
        ctx.fused_backward = FUSED_BACKWARD  # chosen with the forward (a setting changed in between has no say)
        ctx.prefetch = PREFETCH
        ctx.weights = list(weights)
        ctx.shapes = [lv.shape for lv in levels]
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        acc, acc_torch = acc_dtypes(ctx.dtype)
        grad_out = grad_out.contiguous()
        out_h, out_w = ctx.size
        if (ctx.fused_backward and grad_out.numel() > 0 and all(shape[2] * shape[3] > 0 for shape in ctx.shapes)
                and all(shape[2] <= out_h for shape in ctx.shapes)):
            return (None, None, *_fused_backward(grad_out, ctx.shapes, ctx.weights, ctx.size, ctx.dtype,
                                                 ctx.prefetch))
        grads = []
        for shape, weight in zip(ctx.shapes, ctx.weights, strict=True):
            batch, channels, h, w = shape
            if grad_out.numel() == 0 or h * w == 0:
                grads.append(torch.zeros(shape, dtype=ctx.dtype, device=grad_out.device))
                continue
            if (h, w) == (out_h, out_w):
                grads.append((grad_out.to(acc_torch) * weight).to(ctx.dtype))
                continue
            planes = grad_out.view(batch * channels, out_h, out_w)
            # Along y first ([P, out_h, out_w] -> [P, h, out_w]): its loads are whole rows, coalesced, and it
            # reads the full-size gradient once; the x pass's loads are strided gathers, and it runs second, on
            # the smaller array.
            if h != out_h:
                rows = torch.empty(batch * channels, h, out_w, dtype=acc_torch, device=grad_out.device)
                _transpose_resize(planes, rows, out_h, h, out_w, False, 1.0, acc)
            else:
                rows = planes
            grad = torch.empty(shape, dtype=ctx.dtype, device=grad_out.device)
            _x_pass(rows, grad, out_w, weight, acc)
            grads.append(grad)
        return (None, None, *grads)


def pyramid_fuse_triton(levels: Sequence[Tensor], size: tuple[int, int], weights: Sequence[float]) -> Tensor:
    """Kernel path of :func:`aco_kernels.pyramid_fuse` (arguments already validated)."""
    return PyramidFuseFunction.apply(size, list(weights), *levels)
