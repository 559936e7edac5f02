"""aco_kernels: Triton fused kernels for DPSNet, each beside a plain-PyTorch reference.

Ops run their Triton kernel on CUDA tensors and their reference elsewhere; see ``dispatch_mode`` and the
``ACO_KERNELS_FORCE_REFERENCE`` / ``ACO_KERNELS_FORCE_TRITON`` switches. Triton is imported lazily.
"""

from ._dispatch import (
    FORCE_REFERENCE_ENV,
    FORCE_TRITON_ENV,
    current_mode,
    dispatch_mode,
    triton_available,
    use_kernel,
)
from .functional import density_render, kd_loss, multiscale_roi_align, pyramid_fuse

__all__ = [
    "FORCE_REFERENCE_ENV",
    "FORCE_TRITON_ENV",
    "current_mode",
    "density_render",
    "dispatch_mode",
    "kd_loss",
    "multiscale_roi_align",
    "pyramid_fuse",
    "triton_available",
    "use_kernel",
]

__version__ = "0.1.0"
