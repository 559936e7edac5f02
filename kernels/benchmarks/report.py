"""Time every benchmark case with CUDA events and write a markdown table (stdout or --output FILE).

    PYTHONPATH=kernels/src python3 kernels/benchmarks/report.py --output kernels/benchmarks/RESULTS.md

Needs a CUDA GPU; installs nothing. One failing implementation (e.g. torch.compile) is reported, not fatal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import cases


def _row_cells(case, impl, pass_name, median, q20, q80, baseline_ms, copy_gbs):
    gbs = case.bytes_moved[pass_name] / median / 1e6
    speedup = f"{baseline_ms / median:.2f}x" if baseline_ms else "-"
    return [case.name, pass_name, impl, f"{median:.3f}", f"{q20:.3f}-{q80:.3f}", f"{gbs:.0f}",
            f"{100 * gbs / copy_gbs:.0f}%", speedup]


def run(only: list[str] | None = None) -> str:
    copy_gbs = cases.copy_bandwidth_gbs()
    lines = [
        f"# aco-kernels benchmarks on {torch.cuda.get_device_name()}",
        "",
        f"torch {torch.__version__}, triton {__import__('triton').__version__}; median of 20 runs timed with CUDA "
        f"events (q20-q80 beside it); device-to-device copy bandwidth {copy_gbs:.0f} GB/s. GB/s counts the bytes "
        "a pass must move at least; speed-up is against the case's baseline (torchvision for RoIAlign, else the "
        "eager reference).",
        "",
        "| case | pass | implementation | median ms | q20-q80 ms | GB/s | % of copy | speed-up vs baseline |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op, build in cases.CASES.items():
        if only and op not in only:
            continue
        case = build()
        passes = sorted({p for impls in case.impls.values() for p in impls}, key=["fwd", "fwd+bwd"].index)
        for pass_name in passes:
            timings = {}
            for impl, fns in case.impls.items():
                try:
                    timings[impl] = cases.cuda_time_ms(fns[pass_name])
                except Exception as exc:  # a baseline that fails (OOM, compile error) is reported, not fatal
                    timings[impl] = exc
                torch.cuda.empty_cache()
            base = timings.get(case.baseline)
            base_ms = base[0] if isinstance(base, tuple) else None
            for impl, t in timings.items():
                if isinstance(t, Exception):
                    lines.append(f"| {case.name} | {pass_name} | {impl} | failed: {type(t).__name__} | | | | |")
                else:
                    lines.append("| " + " | ".join(_row_cells(case, impl, pass_name, *t, base_ms, copy_gbs)) + " |")
        del case
        torch.cuda.empty_cache()
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="markdown file to write (default: stdout)")
    parser.add_argument("--only", nargs="*", choices=list(cases.CASES), help="run only these ops")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("report.py needs a CUDA GPU", file=sys.stderr)
        return 2
    table = run(args.only)
    if args.output:
        args.output.write_text(table)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
