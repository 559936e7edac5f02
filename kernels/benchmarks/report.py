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


def _row_cells(case, impl, pass_name, timing, graph, baseline, baseline_graph, copy_gbs):
    median, q20, q80 = timing
    graph_ms = graph[0] if isinstance(graph, tuple) else None
    best = graph_ms if graph_ms is not None else median
    gbs = case.bytes_moved[pass_name] / best / 1e6
    speedup = f"{baseline / median:.2f}x" if baseline else "-"
    graph_speedup = f"{baseline_graph / graph_ms:.2f}x" if baseline_graph and graph_ms else "-"
    return [case.name, pass_name, impl, f"{median:.3f}", f"{q20:.3f}-{q80:.3f}",
            f"{graph_ms:.3f}" if graph_ms is not None else "not capturable", f"{gbs:.0f}",
            f"{100 * gbs / copy_gbs:.0f}%", speedup, graph_speedup]


def _measure(fn, timer):
    try:
        return timer(fn)
    except Exception as exc:  # a baseline that fails (OOM, compile error, not capturable) is reported, not fatal
        return exc
    finally:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run(only: list[str] | None = None, output: Path | None = None) -> str:
    """The markdown table; with ``output``, rewritten after each op so a run cut short keeps what it timed."""
    copy_gbs = cases.copy_bandwidth_gbs()
    lines = [
        f"# aco-kernels benchmarks on {torch.cuda.get_device_name()}",
        "",
        f"torch {torch.__version__}, triton {__import__('triton').__version__}; median of 20 runs timed with CUDA "
        f"events (q20-q80 beside it), as called from Python (argument checks, launches and autograd included); "
        f"'graph ms' replays the same call captured in a CUDA graph: the device time alone. Device-to-device "
        f"copy bandwidth {copy_gbs:.0f} GB/s. GB/s counts the bytes a pass must move at least, over the graph "
        "time where there is one. Speed-ups are against the case's baseline (torchvision for RoIAlign, else the "
        "eager reference: the public op on its torch path), from the medians and from the graph times.",
        "",
        "| case | pass | implementation | median ms | q20-q80 ms | graph ms | GB/s | % of copy | speed-up | "
        "speed-up (graph) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op, build in cases.CASES.items():
        if only and op not in only:
            continue
        case = build()
        passes = sorted({p for impls in case.impls.values() for p in impls}, key=["fwd", "fwd+bwd"].index)
        for pass_name in passes:
            timings, graphs = {}, {}
            for impl, fns in case.impls.items():
                timings[impl] = _measure(fns[pass_name], cases.cuda_time_ms)
            for impl, fns in case.impls.items():  # after the plain timings: a failed capture cannot spoil them
                graphs[impl] = _measure(fns[pass_name], cases.cuda_graph_time_ms)
            base = timings.get(case.baseline)
            base_ms = base[0] if isinstance(base, tuple) else None
            base_graph = graphs.get(case.baseline)
            base_graph_ms = base_graph[0] if isinstance(base_graph, tuple) else None
            for impl, t in timings.items():
                if isinstance(t, Exception):
                    lines.append(f"| {case.name} | {pass_name} | {impl} | failed: {type(t).__name__} | | | | | | |")
                else:
                    cells = _row_cells(case, impl, pass_name, t, graphs[impl], base_ms, base_graph_ms, copy_gbs)
                    lines.append("| " + " | ".join(cells) + " |")
        del case
        torch.cuda.empty_cache()
        if output:
            output.write_text("\n".join(lines) + "\n")
        print(f"report.py: {op} done", file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def _print_tuned_configs() -> None:
    """The config autotuning chose for each kernel and shape key (into the log, for the README)."""
    import importlib

    for module_name in ("density_render", "pyramid_fuse", "roi_align", "kd_loss"):
        module = importlib.import_module(f"aco_kernels.ops.{module_name}")
        for name, obj in vars(module).items():
            for key, config in getattr(obj, "cache", {}).items():
                print(f"report.py: tuned {module_name}.{name} {key}: {config}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="markdown file to write (default: stdout)")
    parser.add_argument("--only", nargs="*", choices=list(cases.CASES), help="run only these ops")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("report.py needs a CUDA GPU", file=sys.stderr)
        return 2
    table = run(args.only, args.output)
    _print_tuned_configs()
    if not args.output:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
