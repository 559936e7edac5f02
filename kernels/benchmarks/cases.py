"""Benchmark cases at DPSNet sizes and a CUDA-event timer, shared by the pytest benchmarks and report.py.

Each case builds its inputs once and returns the implementations to compare, keyed by name, each a
``fwd`` callable and (where the op trains) a ``fwd+bwd`` callable, plus the bytes a pass must move at
least (for achieved bandwidth).
"""

from __future__ import annotations

import functools
import importlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import aco_kernels
from aco_kernels import reference

BATCH = 8
CHANNELS = 256
P2 = 200  # 800x800 images at stride 4
NUM_ROIS_PER_IMAGE = 512
KD_ROWS, KD_CLASSES = 4096, 201
DENSITY_CLASSES, DENSITY_STRIDE, INSTANCES_PER_IMAGE = 200, 8, 20


@dataclass
class Case:
    name: str
    # impl name -> pass name ("fwd" / "fwd+bwd") -> callable
    impls: dict[str, dict[str, Callable[[], object]]] = field(default_factory=dict)
    bytes_moved: dict[str, int] = field(default_factory=dict)
    baseline: str = "eager reference"


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile in milliseconds of ``fn``, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    q = statistics.quantiles(times, n=5)
    return statistics.median(times), q[0], q[-1]


def cuda_graph_time_ms(fn: Callable[[], object], reps: int = 20) -> tuple[float, float, float]:
    """Like :func:`cuda_time_ms`, but ``fn`` is captured once in a CUDA graph and the graph is replayed: the
    device time without Python and launch overhead. Raises if ``fn`` cannot be captured (e.g. it syncs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    try:
        return cuda_time_ms(graph.replay, warmup=2, reps=reps)
    finally:
        del graph


def copy_bandwidth_gbs(num_bytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (read + write) in GB/s."""
    src = torch.empty(num_bytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms, _, _ = cuda_time_ms(lambda: dst.copy_(src))
    return 2 * num_bytes / ms / 1e6


def _fwd_bwd(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], *args) -> Callable[[], object]:
    """A fwd+bwd pass: forward, then gradients of every input (no accumulation between repeats)."""
    def run():
        out = fn(inputs, *args)
        return torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)
    return run


def _kernel(fn):
    def run(*args, **kwargs):
        with aco_kernels.dispatch_mode("auto"):
            return fn(*args, **kwargs)
    return run


def _with_setting(module_name: str, settings: dict, fn):
    """``fn`` run with ``aco_kernels.ops.<module_name>.<name> = value`` for each of ``settings`` (a kernel
    variant), restored after. The ops read them in the forward (the backward's choice is made there too)."""
    def run(*args, **kwargs):
        module = importlib.import_module(f"aco_kernels.ops.{module_name}")
        old = {name: getattr(module, name) for name in settings}
        for name, value in settings.items():
            setattr(module, name, value)
        try:
            return fn(*args, **kwargs)
        finally:
            for name, value in old.items():
                setattr(module, name, value)
    return run


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _eager(fn):
    """The public op on its torch reference path: the same argument checks as the kernel path."""
    def run(*args, **kwargs):
        with aco_kernels.dispatch_mode("reference"):
            return fn(*args, **kwargs)
    return run


def pyramid_fuse_case(dtype=torch.float32) -> Case:
    sizes = [P2 // 2**i + (1 if i == 4 else 0) for i in range(5)]  # 200, 100, 50, 25, 13
    levels = [torch.randn(BATCH, CHANNELS, s, s, device="cuda", dtype=dtype, requires_grad=True) for s in sizes]
    target, weights = (P2, P2), [1.0, 0.8, 0.6, 0.4, 0.2]
    case = Case(f"pyramid_fuse P2-P6 -> {P2}x{P2}, B={BATCH}, C={CHANNELS}, {str(dtype)[6:]}")
    impls = {
        "kernel": _kernel(lambda lv, s, w: aco_kernels.pyramid_fuse(lv, s, w)),
        **{name: _kernel(_with_setting("pyramid_fuse", settings, lambda lv, s, w: aco_kernels.pyramid_fuse(lv, s, w)))
           for name, settings in [
               ("kernel, coarse rows prefetched too", {"PREFETCH_COARSE": True}),
               ("kernel, rows loaded when summed (no prefetch)", {"PREFETCH": False}),
               ("kernel, one y pass per level in the backward", {"FUSED_BACKWARD": False}),
           ]},
        "eager reference": _eager(lambda lv, s, w: aco_kernels.pyramid_fuse(lv, s, w)),
        "compiled reference": _compiled(reference.pyramid_fuse_reference),
    }
    for name, fn in impls.items():
        case.impls[name] = {"fwd": (lambda fn=fn: fn(levels, target, weights)),
                            "fwd+bwd": _fwd_bwd(fn, levels, target, weights)}
    level_bytes = sum(lv.numel() for lv in levels) * levels[0].element_size()
    out_bytes = BATCH * CHANNELS * P2 * P2 * levels[0].element_size()
    case.bytes_moved = {"fwd": level_bytes + out_bytes, "fwd+bwd": 2 * (level_bytes + out_bytes) + out_bytes}
    return case


def density_render_case() -> Case:
    map_size = (P2 * 4 // DENSITY_STRIDE, P2 * 4 // DENSITY_STRIDE)
    k = BATCH * INSTANCES_PER_IMAGE
    g = torch.Generator(device="cuda").manual_seed(0)
    centers = torch.rand(k, 2, device="cuda", generator=g) * P2 * 4
    sizes = torch.rand(k, 2, device="cuda", generator=g) * 200 + 20
    labels = torch.randint(0, DENSITY_CLASSES, (k,), device="cuda", generator=g)
    batch_index = torch.arange(BATCH, device="cuda").repeat_interleave(INSTANCES_PER_IMAGE)
    kwargs = {"num_images": BATCH, "num_classes": DENSITY_CLASSES, "map_size": map_size, "stride": DENSITY_STRIDE}
    case = Case(f"density_render {BATCH}x{DENSITY_CLASSES}x{map_size[0]}x{map_size[1]}, {k} instances")
    impls = {
        "kernel": _kernel(aco_kernels.density_render),
        # no range check: no host sync (what DPSNet's training step calls)
        "kernel, check=False": _kernel(functools.partial(aco_kernels.density_render, check=False)),
        "eager reference": _eager(aco_kernels.density_render),
        "compiled reference": _compiled(reference.density_render_reference),
    }
    for name, fn in impls.items():
        case.impls[name] = {"fwd": (lambda fn=fn: fn(centers, sizes, labels, batch_index, **kwargs))}
    case.bytes_moved = {"fwd": BATCH * DENSITY_CLASSES * map_size[0] * map_size[1] * 4}
    return case


def roi_align_case(dtype=torch.float32) -> Case:
    features = [torch.randn(BATCH, CHANNELS, P2 // 2**i, P2 // 2**i, device="cuda", dtype=dtype, requires_grad=True)
                for i in range(4)]
    image = P2 * 4
    k = BATCH * NUM_ROIS_PER_IMAGE
    g = torch.Generator(device="cuda").manual_seed(0)
    xy = torch.rand(k, 2, device="cuda", generator=g) * (image - 32)
    wh = torch.rand(k, 2, device="cuda", generator=g) * 400 + 16
    boxes = torch.cat([xy, (xy + wh).clamp(max=image)], dim=1).to(dtype)
    rois = torch.cat([torch.arange(BATCH, device="cuda").repeat_interleave(NUM_ROIS_PER_IMAGE)[:, None].to(dtype),
                      boxes], dim=1)
    shapes = [(image, image)] * BATCH
    scales = [0.25 / 2**i for i in range(4)]
    # torchvision's pooler is aligned=False: every implementation runs aligned=False here.
    case = Case(f"multiscale_roi_align {k} RoIs, 7x7, B={BATCH}, C={CHANNELS}, P2-P5, {str(dtype)[6:]}",
                baseline="torchvision MultiScaleRoIAlign")

    def ours(feats):
        return aco_kernels.multiscale_roi_align(feats, rois, shapes, sampling_ratio=2, aligned=False)

    def ref(feats):
        return reference.multiscale_roi_align_reference(feats, rois, scales, (7, 7), 2, aligned=False)

    def ours_planes(feats):  # the backward's atomics into [N, C, H, W] gradients, bins fastest (the former layout)
        from aco_kernels.ops import roi_align

        roi_align.GRAD_CHANNELS_LAST = False  # read by the forward, kept for its backward
        try:
            return ours(feats)
        finally:
            roi_align.GRAD_CHANNELS_LAST = True

    impls = {"kernel": _kernel(ours), "kernel, [N, C, H, W] atomics": _kernel(ours_planes),
             "eager reference": _eager(ours), "compiled reference": _compiled(ref)}
    try:
        import torchvision

        names = ["p2", "p3", "p4", "p5"]
        pooler = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
        per_image = list(boxes.split(NUM_ROIS_PER_IMAGE))
        impls["torchvision MultiScaleRoIAlign"] = lambda feats: pooler(dict(zip(names, feats, strict=True)),
                                                                       per_image, shapes)
    except ImportError:
        case.baseline = "eager reference"
    for name, fn in impls.items():
        case.impls[name] = {"fwd": (lambda fn=fn: fn(features)), "fwd+bwd": _fwd_bwd(fn, features)}
    out_bytes = k * CHANNELS * 49 * features[0].element_size()
    case.bytes_moved = {"fwd": out_bytes, "fwd+bwd": 3 * out_bytes}  # lower bound: gathers are data dependent
    return case


def kd_loss_case(dtype=torch.float32) -> Case:
    g = torch.Generator(device="cuda").manual_seed(0)
    student = torch.randn(KD_ROWS, KD_CLASSES, device="cuda", generator=g).to(dtype).requires_grad_(True)
    teacher = torch.randn(KD_ROWS, KD_CLASSES, device="cuda", generator=g).to(dtype)
    labels = torch.randint(0, KD_CLASSES, (KD_ROWS,), device="cuda", generator=g)
    weights = torch.rand(KD_ROWS, device="cuda", generator=g)
    kwargs = {"temperature": 4.0, "labels": labels, "alpha": 0.5, "weights": weights}
    case = Case(f"kd_loss N={KD_ROWS}, C={KD_CLASSES}, labels + weights, {str(dtype)[6:]}")

    def ours(s):
        return aco_kernels.kd_loss(s[0], teacher, **kwargs)

    def ref(s):
        return reference.kd_loss_reference(s[0], teacher, **kwargs)

    impls = {"kernel": _kernel(ours),
             "kernel, backward kernel": _kernel(_with_setting("kd_loss", {"GRAD_IN_FORWARD": False}, ours)),
             "eager reference": _eager(ours), "compiled reference": _compiled(ref)}
    for name, fn in impls.items():
        case.impls[name] = {"fwd": (lambda fn=fn: fn([student])), "fwd+bwd": _fwd_bwd(fn, [student])}
    nbytes = student.numel() * student.element_size()
    case.bytes_moved = {"fwd": 2 * nbytes, "fwd+bwd": 5 * nbytes}
    return case


CASES = {
    "pyramid_fuse": pyramid_fuse_case,
    "density_render": density_render_case,
    "multiscale_roi_align": roi_align_case,
    "kd_loss": kd_loss_case,
}
