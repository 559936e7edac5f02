import subprocess
import sys

import pytest
import torch

import aco_kernels
from aco_kernels import _dispatch


def test_cpu_tensors_use_the_reference_by_default(monkeypatch):
    monkeypatch.delenv(aco_kernels.FORCE_TRITON_ENV, raising=False)
    monkeypatch.delenv(aco_kernels.FORCE_REFERENCE_ENV, raising=False)
    assert aco_kernels.current_mode() == "auto"
    assert not aco_kernels.use_kernel(torch.zeros(2))


def test_env_switches(monkeypatch):
    monkeypatch.setenv(aco_kernels.FORCE_REFERENCE_ENV, "1")
    assert aco_kernels.current_mode() == "reference"
    monkeypatch.delenv(aco_kernels.FORCE_REFERENCE_ENV)
    monkeypatch.setenv(aco_kernels.FORCE_TRITON_ENV, "1")
    assert aco_kernels.current_mode() == "triton"
    # The context manager wins over the environment, and restores it afterwards.
    with aco_kernels.dispatch_mode("reference"):
        assert aco_kernels.current_mode() == "reference"
        assert not aco_kernels.use_kernel(torch.zeros(2))
    assert aco_kernels.current_mode() == "triton"


def test_forced_kernel_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with aco_kernels.dispatch_mode("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        aco_kernels.use_kernel(torch.zeros(2))


def test_forced_kernel_without_triton_says_so(monkeypatch):
    monkeypatch.setattr(_dispatch, "_triton_ok", False)
    assert not aco_kernels.use_kernel(torch.zeros(2))
    with aco_kernels.dispatch_mode("triton"), pytest.raises(RuntimeError, match="triton does not import"):
        aco_kernels.use_kernel(torch.zeros(2))


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"), aco_kernels.dispatch_mode("fast"):
        pass


def test_package_works_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, aco_kernels\n"
        "assert not aco_kernels.triton_available()\n"
        "out = aco_kernels.density_render(torch.tensor([[8.0, 8.0]]), torch.tensor([[16.0, 16.0]]),"
        " torch.tensor([0]), torch.tensor([0]), num_images=1, num_classes=1, map_size=(4, 4), stride=4)\n"
        "assert abs(float(out.sum()) - 1.0) < 1e-5\n"
        "assert 'triton' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_autotune_switch(monkeypatch):
    pytest.importorskip("triton")
    from aco_kernels.ops._common import autotune_configs

    configs, cpu = ["a", "b", "c"], "cpu"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert autotune_configs(configs, cpu) == [cpu]  # the interpreter cannot benchmark
    assert autotune_configs(configs) == ["a"]
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.delenv("ACO_KERNELS_NO_AUTOTUNE", raising=False)
    assert autotune_configs(configs, cpu) == configs
    monkeypatch.setenv("ACO_KERNELS_NO_AUTOTUNE", "1")
    assert autotune_configs(configs, cpu) == ["a"]
