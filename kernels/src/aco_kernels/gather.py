"""Multi-level RoIAlign as one gather over the pyramid's pixels, in plain torch with its own backward (one
``index_add_``): equal to torchvision's ``roi_align`` of each RoI on its level (a fixed sampling ratio), and on CPU
several times faster to train through than torchvision's compiled op, whose backward walks every RoI, channel and
bin in one thread. The bilinear rule is :func:`aco_kernels.reference.roi_axis_samples`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .reference import roi_axis_samples


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
    y_lo, y_hi, ly, y_in = roi_axis_samples(ys, height)
    x_lo, x_hi, lx, x_in = roi_axis_samples(xs, width)
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
    torchvision's ``roi_align`` of each RoI [R, 5] (image index, x1, y1, x2, y2) on its level ``level_of_roi`` [R]
    of ``levels`` (list[Tensor[B, C, H_l, W_l]] at ``scales``), for a fixed ``sampling_ratio`` >= 1."""
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
