"""Translating a whole demo-size image with the default translator: float32 against bfloat16 autocast.

Run on demand: ``pytest packages/rpc-synth/benchmarks/test_bench_render.py --benchmark-enable -s``. The ratio
printed is measured in the same run; bfloat16 pays only where the CPU computes it natively (AMX), elsewhere it
is emulated and slower than float32.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rpc_synth.render import native_bf16_cpu  # noqa: E402
from rpc_synth.render.apply import translate_image  # noqa: E402
from rpc_synth.render.train import TranslatorConfig, build_networks  # noqa: E402

SIZE = 384  # the mini world's checkout images


@pytest.fixture(scope="module")
def generator():
    return build_networks(TranslatorConfig())["g_ab"].eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bfloat16"])
def test_bench_translate(benchmark, generator, image, amp):
    benchmark.pedantic(lambda: translate_image(generator, image, seed=1, amp=amp), rounds=20, warmup_rounds=2)


def test_bench_translate_ratio(benchmark, generator, image):
    """Both precisions alternated in one run; prints ms per image and the ratio (no assertion)."""
    times = {False: [], True: []}
    for amp in (False, True):
        translate_image(generator, image, seed=1, amp=amp)  # warm-up
    for _ in range(10):
        for amp in (False, True):
            start = time.perf_counter()
            translate_image(generator, image, seed=1, amp=amp)
            times[amp].append(time.perf_counter() - start)
    fp32, bf16 = (1000 * float(np.median(times[a])) for a in (False, True))
    benchmark.extra_info.update(float32_ms=fp32, bfloat16_ms=bf16, speedup=fp32 / bf16, amx=native_bf16_cpu())
    print(f"\n{SIZE} px image, {torch.get_num_threads()} threads, AMX {native_bf16_cpu()}: float32 {fp32:.1f} ms, "
          f"bfloat16 {bf16:.1f} ms, ratio {fp32 / bf16:.2f}x")
    benchmark.pedantic(lambda: None, rounds=1)
