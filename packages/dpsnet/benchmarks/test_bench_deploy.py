"""Deployment latency: one image through dpsnet.Counter (torch) and through the onnxruntime runner, on the CPU.

Run with ``make bench`` (or ``pytest packages/dpsnet/benchmarks/test_bench_deploy.py --benchmark-enable``; not
part of the test suite). Both use a ``cpu-small`` model (24 SKUs, random weights, its test-time flips and NMS)
at the preset's input size (384 x 384 px), float32, 2 threads (``DPSNET_BENCH_THREADS`` changes it): torch's
intra-op threads for the Counter, onnxruntime's for the runner (whose Python glue still runs in torch). The
summary line prints the runner's latency over the Counter's. Needs the ``export`` extra.
"""

from __future__ import annotations

import os

import pytest
import torch

from dpsnet import dpsnet_model
from dpsnet.checkpoint import save_checkpoint
from dpsnet.config import make_config, model_kwargs
from dpsnet.data import CategoryMap
from dpsnet.deploy import Counter, make_bundle

pytest.importorskip("onnxruntime")
TIMES: dict[str, float] = {}
THREADS = int(os.environ.get("DPSNET_BENCH_THREADS", "2"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from dpsnet.deploy.onnx_export import export_onnx

    config = make_config("cpu-small")
    categories = CategoryMap.from_categories([{"id": i + 1, "name": f"sku{i}", "supercategory": "s"}
                                              for i in range(24)], config["model.count_classes"])
    kwargs = model_kwargs(config)
    torch.manual_seed(0)
    model = dpsnet_model(categories.num_classes, categories.count_class_of_label,
                         num_count_classes=len(categories.count_names), **kwargs)
    tmp = tmp_path_factory.mktemp("bench_deploy")
    save_checkpoint({"model": model.state_dict(), "model_kwargs": kwargs, "categories": categories.to_dict(),
                     "config": {}}, tmp / "last.pt")
    return export_onnx(make_bundle(tmp / "last.pt", 0.5, protocol="fixed"), tmp / "onnx")


def _image():
    size = model_kwargs(make_config("cpu-small"))["max_size"]
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["counter", "onnxruntime"])
def test_count_one_image(benchmark, exported, name):
    from dpsnet.deploy.onnx_runner import OnnxCounter

    torch.set_num_threads(THREADS)
    counter = Counter.load(exported, "cpu") if name == "counter" else OnnxCounter.load(exported, threads=THREADS)
    image = _image()
    benchmark.pedantic(counter, args=(image,), rounds=15, iterations=1, warmup_rounds=3)
    TIMES[name] = benchmark.stats.stats.median


def test_summary():
    if len(TIMES) < 2:
        pytest.skip("run the whole file to compare")
    size = model_kwargs(make_config("cpu-small"))["max_size"]
    print(f"\ncount one {size} px image, cpu-small, {THREADS} threads: Counter {TIMES['counter'] * 1000:.0f} ms, "
          f"onnxruntime runner {TIMES['onnxruntime'] * 1000:.0f} ms, ratio (runner / Counter) "
          f"{TIMES['onnxruntime'] / TIMES['counter']:.2f}")
