"""Helpers shared by the kernel launchers (imports triton)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .._dispatch import KERNEL_MAX_LEVELS, interpreting

TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}


def tl_dtype(dtype: torch.dtype):
    if dtype not in TL_DTYPES:
        raise TypeError(f"dtype should be one of {list(TL_DTYPES)}, got {dtype}")
    return TL_DTYPES[dtype]


def acc_dtypes(dtype: torch.dtype):
    """Accumulate in float64 for float64 inputs (gradcheck), float32 otherwise: (triton, torch) dtypes."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


MAX_LEVELS = KERNEL_MAX_LEVELS  # pyramid levels passed to a kernel as separate arguments


def autotune_configs(configs: list, interpreter_config=None) -> list:
    """All configs on a GPU (with ``ACO_KERNELS_NO_AUTOTUNE=1``: the first). Under the CPU interpreter, which
    cannot benchmark, ``interpreter_config`` (else the first): it pays per program, so large blocks suit it."""
    if interpreting():
        return [interpreter_config or configs[0]]
    if os.environ.get("ACO_KERNELS_NO_AUTOTUNE", "").strip().lower() in ("1", "true", "yes", "on"):
        return configs[:1]  # no benchmarking on first use (tests, short jobs): the first config
    return configs


def level_args(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` padded to :data:`MAX_LEVELS` with the first one, to pass as separate kernel arguments
    (no pointer table to copy to the device: no host sync, and CUDA-graph capturable)."""
    if not 0 < len(tensors) <= MAX_LEVELS:
        raise ValueError(f"between 1 and {MAX_LEVELS} levels are supported by the kernels, got {len(tensors)}")
    return list(tensors) + [tensors[0]] * (MAX_LEVELS - len(tensors))


def pad_levels(values: Sequence, fill) -> list:
    return list(values) + [fill] * (MAX_LEVELS - len(values))


@triton.jit
def pick(i, a0, a1, a2, a3, a4, a5):
    """``(a0, ..., a5)[i]``: resolved while compiling for a constexpr ``i``, a scalar branch otherwise."""
    v = a0
    if i == 1:
        v = a1
    elif i == 2:
        v = a2
    elif i == 3:
        v = a3
    elif i == 4:
        v = a4
    elif i == 5:
        v = a5
    return v
