"""Helpers shared by the kernel launchers (imports triton)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton.language as tl

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


def pointer_table(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Addresses of several tensors as an int64 tensor, so one launch can read them all: the kernel turns
    an entry back into a pointer with ``tl.load(table + i).to(tl.pointer_type(dtype))``."""
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=device)
