"""pytest-benchmark runs of every case in cases.py (skipped without CUDA). `make bench` / `make bench-gpu`."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need a CUDA GPU", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("aco_kernels_bench_cases", Path(__file__).with_name("cases.py"))
cases = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cases  # dataclasses resolve the string annotations through sys.modules
_spec.loader.exec_module(cases)

_built = {}


def _case(name):
    if name not in _built:
        _built[name] = cases.CASES[name]()
    return _built[name]


PARAMS = [(op, impl, pass_name)
          for op in cases.CASES
          for impl in ("kernel", "eager reference", "compiled reference", "torchvision MultiScaleRoIAlign")
          for pass_name in ("fwd", "fwd+bwd")
          if not (op == "density_render" and pass_name == "fwd+bwd")
          and not (impl.startswith("torchvision") and op != "multiscale_roi_align")]


@pytest.mark.gpu
@pytest.mark.parametrize("op,impl,pass_name", PARAMS)
def test_bench(benchmark, op, impl, pass_name):
    case = _case(op)
    if impl not in case.impls:
        pytest.skip(f"{impl} not available")
    fn = case.impls[impl][pass_name]
    median, q20, q80 = cases.cuda_time_ms(fn)  # also warms up (and compiles) before pytest-benchmark times it
    benchmark.extra_info.update({
        "gpu": torch.cuda.get_device_name(), "cuda_event_median_ms": median, "q20_ms": q20, "q80_ms": q80,
        "gb_per_s": case.bytes_moved[pass_name] / median / 1e6,
    })
    benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=10, warmup_rounds=1)
