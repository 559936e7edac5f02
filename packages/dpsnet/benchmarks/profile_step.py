"""Profile DPSNet ``rpc-paper`` training steps on a GPU, kernels vs references (torch.profiler tables).

    PYTHONPATH=kernels/src:packages/rpc-metrics/src:packages/dpsnet/src \\
        python3 packages/dpsnet/benchmarks/profile_step.py [--steps 2] [--out DIR]

The model, batch and step are ``gpu_step.py``'s (bf16 autocast, cuDNN autotuning, SGD). For each dispatch mode:
the step times of the profiled steps (CUDA events) and the ops by device time and by host time. Installs nothing.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import gpu_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--out", type=Path, help="folder for the tables (default: stdout only)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("profile_step.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    images, targets = gpu_step.batch(2, 800, 12, seed=0)
    build_model = functools.partial(gpu_step.build, gpu_step.batch(2, 800, 1, seed=2)[0])
    for mode in ("auto", "reference"):
        step = gpu_step._step_fn(build_model, mode, images, targets)
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        times = []
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        averages = prof.key_averages()
        try:
            by_device = averages.table(sort_by="self_device_time_total", row_limit=30)
        except (KeyError, AttributeError, ValueError):  # older torch names it after CUDA
            by_device = averages.table(sort_by="self_cuda_time_total", row_limit=30)
        text = [f"## {mode}: profiled step times (ms) {[round(t, 1) for t in times]}", "", by_device, "",
                averages.table(sort_by="self_cpu_time_total", row_limit=20)]
        print("\n".join(text), flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"profile_{mode}.txt").write_text("\n".join(text) + "\n")
        del step, prof
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
