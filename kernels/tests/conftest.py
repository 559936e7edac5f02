"""Kernel tests run the real Triton kernels on CPU through triton's interpreter.

TRITON_INTERPRET is read when a kernel is defined, so it is set here at import time, before any kernel
module is imported (aco_kernels imports them lazily). On a machine with CUDA the kernels compile natively
and only the GPU tests exercise them.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from aco_kernels import dispatch_mode
from aco_kernels._dispatch import interpreting, triton_available


@pytest.fixture
def kernel_path():
    """Force the kernel path on CPU tensors (needs the interpreter)."""
    if not triton_available() or not interpreting():
        pytest.skip("needs triton and TRITON_INTERPRET=1 to run kernels on CPU")
    with dispatch_mode("triton"):
        yield


@pytest.fixture
def reference_path():
    with dispatch_mode("reference"):
        yield
