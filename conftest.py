"""Repository-wide pytest set-up: the `gpu` marker skips without a CUDA device."""

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with `make bench-gpu` on a GPU machine)")
    for item in gpu_items:
        item.add_marker(skip)
