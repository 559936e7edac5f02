"""GPU checks of the compiled kernels: bounds at borders, odd and large shapes, fp16/bf16, fwd + bwd.

Skipped without CUDA; run by `make bench-gpu`. Each kernel runs in the dtype under test and is compared
with its reference run in float32 on the same GPU, with per-dtype tolerances.
"""

import pytest
import torch
import torch.nn.functional as F

import aco_kernels
from aco_kernels import dispatch_mode
from aco_kernels.reference import (
    density_render_reference,
    kd_loss_reference,
    multiscale_roi_align_reference,
    pyramid_fuse_reference,
)

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rtol, atol) per dtype, for outputs and gradients against the float32 reference.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}


def _gen(seed):
    return torch.Generator(device="cuda").manual_seed(seed)


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol * scale)


# (dtype, the other code path): every dtype on the default path, float32 on the other one
PATHS = [(dtype, False) for dtype in DTYPES] + [(torch.float32, True)]


@pytest.mark.parametrize("dtype,other_path", PATHS)
@pytest.mark.parametrize("shape", [(7, 3), (333, 201), (4096, 201), (5, 70001)])
def test_kd_loss_gpu(dtype, other_path, shape, monkeypatch):
    from aco_kernels.ops import kd_loss as module

    monkeypatch.setattr(module, "GRAD_IN_FORWARD", not other_path)  # other path: a separate backward kernel
    g = _gen(0)
    student = (torch.randn(*shape, device="cuda", generator=g) * 4).to(dtype)
    teacher = (torch.randn(*shape, device="cuda", generator=g) * 4).to(dtype)
    labels = torch.randint(0, shape[1], (shape[0],), device="cuda", generator=g)
    weights = torch.rand(shape[0], device="cuda", generator=g)
    kwargs = {"temperature": 3.0, "labels": labels, "alpha": 0.4, "weights": weights}
    s_ker = student.clone().requires_grad_(True)
    s_ref = student.float().requires_grad_(True)
    out = aco_kernels.kd_loss(s_ker, teacher, **kwargs)
    ref = kd_loss_reference(s_ref, teacher.float(), **kwargs)
    _close(out, ref, dtype)
    out.backward()
    ref.backward()
    assert s_ker.grad.dtype == dtype
    _close(s_ker.grad, s_ref.grad, dtype, scale=1e-2)


@pytest.mark.parametrize("dtype,other_path", [*PATHS, (torch.float32, "no prefetch"), (torch.bfloat16, "coarse")])
@pytest.mark.parametrize("sizes,target", [
    ([(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)], (200, 200)),  # DPSNet P2-P6
    ([(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)], (100, 100)),  # P2-P6 at P3, the released counting view
    ([(37, 29), (19, 15), (10, 8)], (37, 29)),  # odd
    ([(3, 3)], (64, 65)),  # one level, upsampled
    ([(40, 40), (100, 100), (50, 50), (13, 13)], (50, 50)),  # down- and upsampled, no level at stride 8 first
    ([(300, 37), (150, 19), (3, 3), (300, 20)], (300, 37)),  # many strips, 200-row halos, one level equal in y
])
def test_pyramid_fuse_gpu(dtype, other_path, sizes, target, monkeypatch):
    from aco_kernels.ops import pyramid_fuse as module

    # other path: one y pass per level in the backward; "no prefetch": each row loaded when it is summed
    monkeypatch.setattr(module, "FUSED_BACKWARD", other_path is not True)
    monkeypatch.setattr(module, "PREFETCH", other_path != "no prefetch")
    monkeypatch.setattr(module, "PREFETCH_COARSE", other_path == "coarse")  # coarser rows loaded ahead too
    g = _gen(1)
    levels = [torch.randn(2, 19, h, w, device="cuda", generator=g).to(dtype) for h, w in sizes]
    weights = [0.5 + 0.25 * i for i in range(len(sizes))]
    ker = [lv.clone().requires_grad_(True) for lv in levels]
    ref = [lv.float().requires_grad_(True) for lv in levels]
    out = aco_kernels.pyramid_fuse(ker, target, weights)
    expected = pyramid_fuse_reference(ref, target, weights)
    _close(out, expected, dtype, scale=len(sizes))
    grad = torch.randn(expected.shape, device="cuda", generator=g)
    out.backward(grad.to(dtype))
    expected.backward(grad)
    for a, b in zip(ker, ref, strict=True):
        assert a.grad.dtype == dtype
        # Gradients of strongly upsampled levels sum many terms: scale atol by the upsampling factor.
        _close(a.grad, b.grad, dtype, scale=max(1.0, target[0] * target[1] / b.shape[2] / b.shape[3]))


@pytest.mark.parametrize("sigma_rule", ["area", "short_side"])
@pytest.mark.parametrize("map_size,stride,num", [((100, 100), 8, 20), ((13, 17), 8, 5), ((1, 1), 8, 3)])
def test_density_render_gpu(map_size, stride, num, sigma_rule):
    g = _gen(2)
    num_images, num_classes = 8, 200
    h, w = map_size[0] * stride, map_size[1] * stride
    k = num_images * num
    centers = torch.rand(k, 2, device="cuda", generator=g) * torch.tensor([w * 1.2, h * 1.2], device="cuda") - 0.1 * w
    sizes = torch.rand(k, 2, device="cuda", generator=g) * 200 + 1
    labels = torch.randint(0, num_classes, (k,), device="cuda", generator=g)
    batch_index = torch.arange(num_images, device="cuda").repeat_interleave(num)
    kwargs = {"num_images": num_images, "num_classes": num_classes, "map_size": map_size, "stride": stride,
              "sigma_rule": sigma_rule, "sigma_scale": 0.15 if sigma_rule == "area" else 5 / 24}
    out = aco_kernels.density_render(centers, sizes, labels, batch_index, **kwargs)
    ref = density_render_reference(centers, sizes, labels, batch_index, **kwargs)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.sum(), torch.tensor(float(k), device="cuda"), rtol=1e-4, atol=1e-3)
    # Deterministic: no atomics, same bits twice.
    assert torch.equal(out, aco_kernels.density_render(centers, sizes, labels, batch_index, **kwargs))


def _fpn(g, dtype, batch, channels, base):
    return [torch.randn(batch, channels, -(-base[0] // 2**i), -(-base[1] // 2**i), device="cuda",
                        generator=g).to(dtype) for i in range(4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,channels,base,per_image,sampling_ratio", [
    (8, 256, (200, 200), 512, 2),  # DPSNet size
    (2, 33, (51, 37), 77, 0),  # odd, adaptive sampling
])
def test_multiscale_roi_align_gpu(dtype, batch, channels, base, per_image, sampling_ratio):
    g = _gen(3)
    features = _fpn(g, dtype, batch, channels, base)
    img_h, img_w = base[0] * 4, base[1] * 4
    k = batch * per_image
    xy = torch.rand(k, 2, device="cuda", generator=g) * torch.tensor([img_w, img_h], device="cuda") - 8
    wh = torch.rand(k, 2, device="cuda", generator=g) * 300 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:batch] = torch.tensor([img_w - 2.0, img_h - 2.0, img_w + 40.0, img_h + 40.0], device="cuda")  # borders
    rois = torch.cat([torch.arange(batch, device="cuda").repeat_interleave(per_image)[:, None].float(), boxes], 1)
    scales = [0.25 / 2**i for i in range(4)]
    ker = [f.clone().requires_grad_(True) for f in features]
    ref = [f.float().requires_grad_(True) for f in features]
    out = aco_kernels.multiscale_roi_align(ker, rois, [(img_h, img_w)], sampling_ratio=sampling_ratio)
    expected = multiscale_roi_align_reference(ref, rois, scales, (7, 7), sampling_ratio)
    _close(out, expected, dtype)
    grad = torch.randn(expected.shape, device="cuda", generator=g)
    out.backward(grad.to(dtype))
    expected.backward(grad)
    for a, b in zip(ker, ref, strict=True):
        assert a.grad.dtype == dtype
        # The reference leaves no gradient on a level no box maps to (P5 here); the kernel writes zeros.
        _close(a.grad, torch.zeros_like(b) if b.grad is None else b.grad, dtype, scale=10.0)


def test_roi_align_matches_torchvision_cuda():
    torchvision = pytest.importorskip("torchvision")
    g = _gen(4)
    features = _fpn(g, torch.float32, 2, 64, (50, 60))
    # Sorted coordinates give valid (x1 < x2, y1 < y2) boxes.
    boxes = [torch.rand(100, 4, device="cuda", generator=g).sort(dim=1).values * 200 for _ in range(2)]
    names = ["p2", "p3", "p4", "p5"]
    pooler = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    expected = pooler(dict(zip(names, features, strict=True)), boxes, [(200, 240)] * 2)
    out = aco_kernels.multiscale_roi_align(features, boxes, [(200, 240)] * 2, aligned=False)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_dispatch_on_cuda_runs_kernels():
    x = torch.randn(4, 5, device="cuda")
    assert aco_kernels.use_kernel(x)
    with dispatch_mode("reference"):
        assert not aco_kernels.use_kernel(x)
    torch.testing.assert_close(
        aco_kernels.pyramid_fuse([x[None, None]], (9, 7)),
        F.interpolate(x[None, None], size=(9, 7), mode="bilinear", align_corners=False),
    )
