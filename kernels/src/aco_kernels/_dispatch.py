"""Choose between a Triton kernel and its torch reference.

Rule: tensors on CUDA and triton importable -> kernel; anything else -> reference.
Two switches change the rule, each as an environment variable or through :func:`dispatch_mode`:

- ``ACO_KERNELS_FORCE_REFERENCE=1``: always the reference (any device).
- ``ACO_KERNELS_FORCE_TRITON=1``: the kernel also on CPU tensors; needs ``TRITON_INTERPRET=1`` set before
  the first kernel is used (triton reads it when a kernel is defined), so tests run the real kernels on CPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

# The kernels take pyramid levels as separate kernel arguments (ops._common); more levels use the reference.
KERNEL_MAX_LEVELS = 6
FORCE_REFERENCE_ENV = "ACO_KERNELS_FORCE_REFERENCE"
FORCE_TRITON_ENV = "ACO_KERNELS_FORCE_TRITON"
_MODES = ("auto", "reference", "triton")
_override: str | None = None
_triton_ok: bool | None = None


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def triton_available() -> bool:
    """True when triton imports (checked once; never touches the GPU driver)."""
    global _triton_ok
    if _triton_ok is None:
        if importlib.util.find_spec("triton") is None:
            _triton_ok = False
        else:
            try:
                import triton
                import triton.language  # noqa: F401
            except Exception:
                _triton_ok = False
            else:
                _triton_ok = True
    return _triton_ok


def interpreting() -> bool:
    """True when triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def current_mode() -> str:
    """The active mode: the :func:`dispatch_mode` override, else the environment, else ``"auto"``."""
    if _override is not None:
        return _override
    if _env_on(FORCE_REFERENCE_ENV):
        return "reference"
    if _env_on(FORCE_TRITON_ENV):
        return "triton"
    return "auto"


@contextlib.contextmanager
def dispatch_mode(mode: str) -> Iterator[None]:
    """Set the dispatch mode (``"auto"``, ``"reference"`` or ``"triton"``) inside a ``with`` block."""
    global _override
    if mode not in _MODES:
        raise ValueError(f"mode should be one of {_MODES}, got {mode!r}")
    previous = _override
    _override = mode
    try:
        yield
    finally:
        _override = previous


def use_kernel(*tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors runs its Triton kernel (True) or its torch reference (False)."""
    mode = current_mode()
    if mode == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if mode == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("the kernel path is forced (ACO_KERNELS_FORCE_TRITON) but triton does not import")
    if not on_cuda and not interpreting():
        raise RuntimeError(
            "the kernel path is forced on CPU tensors, which needs TRITON_INTERPRET=1 set before the first "
            "kernel is used"
        )
    return True
