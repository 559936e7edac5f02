"""``rpc-synth render``: translate synthesized checkout images toward the checkout domain.

Two methods share one ``apply``: a compact CycleGAN-style translator (``networks``, ``losses``, ``train``;
needs torch, the ``render`` extra) and per-channel histogram matching (``histogram``; numpy only).
``measure`` holds the domain-gap statistic and the product-preservation checks. Importing this package
does not import torch; only training and applying the translator do.
"""

from __future__ import annotations

from ..generate import InputError


def require_torch():
    """Import and return torch, or raise ``InputError`` saying how to install it (the CLI exits with 2)."""
    try:
        import torch
    except ImportError:
        raise InputError("the cyclegan translator needs torch: pip install 'rpc-synth[render]' "
                         "(or use --method histogram, which does not)") from None
    return torch


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX tiles: Intel Xeon 4th generation and newer; AVX512-BF16:
    AMD Zen 4 and newer, Intel Cooper Lake), where the translator's convolutions under bfloat16 autocast run
    about 1.4x faster; elsewhere bfloat16 is emulated, slower than float32."""
    torch = require_torch()
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(probe and probe()) for probe in probes)


def resolve_device(device: str):
    """``auto`` -> the first CUDA GPU when there is one, else the CPU; ``cpu`` / ``cuda[:N]`` as given (an
    ``InputError`` naming the choices when it cannot be had)."""
    torch = require_torch()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device should be auto, cpu or cuda[:N], got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device should be auto, cpu or cuda[:N], got {device!r}")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                         "use --device cpu or auto")
    return dev
