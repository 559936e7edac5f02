import pytest
import torch

import aco_kernels
from aco_kernels.reference import multiscale_roi_align_reference

torchvision = pytest.importorskip("torchvision")
from torchvision.ops import MultiScaleRoIAlign, roi_align  # noqa: E402
from torchvision.ops.poolers import LevelMapper  # noqa: E402

IMAGE_SHAPES = [(130, 160), (120, 164)]
LEVEL_SIZES = [(33, 41), (17, 21), (9, 11)]  # strides 4, 8, 16 of a 130x164 batch


def _pyramid(seed, channels=5, sizes=LEVEL_SIZES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, channels, h, w, generator=g, dtype=dtype) for h, w in sizes]


def _boxes(seed, per_image=9, dtype=torch.float32):
    """Random boxes of all sizes, some crossing or sitting on the image borders, some degenerate."""
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for h, w in IMAGE_SHAPES:
        xy = torch.rand(per_image, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype) - 10
        wh = torch.rand(per_image, 2, generator=g, dtype=dtype) * 120 + 0.5
        b = torch.cat([xy, xy + wh], dim=1)
        b[0] = torch.tensor([0.0, 0.0, w, h], dtype=dtype)  # the whole image
        b[1] = torch.tensor([w - 3.0, h - 2.0, w + 5.0, h + 9.0], dtype=dtype)  # past the bottom-right corner
        b[2] = torch.tensor([5.0, 6.0, 5.0, 6.0], dtype=dtype)  # empty box
        boxes.append(b)
    return boxes


def _kernel(features, boxes, **kwargs):
    return aco_kernels.multiscale_roi_align(features, boxes, IMAGE_SHAPES, **kwargs)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_matches_torchvision_pooler(kernel_path, sampling_ratio):
    """aligned=False is exactly torchvision's MultiScaleRoIAlign."""
    for seed in (0, 1):
        features = _pyramid(seed)
        boxes = _boxes(seed)
        pooler = MultiScaleRoIAlign(["p2", "p3", "p4"], (7, 5), sampling_ratio, canonical_scale=32, canonical_level=3)
        expected = pooler(dict(zip(["p2", "p3", "p4"], features, strict=True)), boxes, IMAGE_SHAPES)
        out = _kernel(features, boxes, output_size=(7, 5), sampling_ratio=sampling_ratio, canonical_scale=32,
                      canonical_level=3, aligned=False)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_aligned_matches_torchvision_level_mapper_and_roi_align(kernel_path):
    features = _pyramid(2)
    boxes = _boxes(2)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    levels = LevelMapper(2, 4, canonical_scale=32, canonical_level=3)(boxes)
    expected = torch.zeros(len(rois), 5, 7, 7)
    for lvl, (feature, scale) in enumerate(zip(features, [1 / 4, 1 / 8, 1 / 16], strict=True)):
        idx = torch.nonzero(levels == lvl).flatten()
        expected[idx] = roi_align(feature, rois[idx], (7, 7), scale, 2, aligned=True)
    out = _kernel(features, boxes, output_size=7, sampling_ratio=2, canonical_scale=32, canonical_level=3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last_grad", [True, False])
@pytest.mark.parametrize("sizes,sampling_ratio", [(LEVEL_SIZES, 2), (LEVEL_SIZES, 0), (LEVEL_SIZES[:1], 1)])
def test_forward_and_gradients_match_reference(kernel_path, monkeypatch, sizes, sampling_ratio, channels_last_grad):
    from aco_kernels.ops import roi_align

    # both layouts of the backward's atomics: [N, H, W, C] buffers (the default) and [N, C, H, W] gradients
    monkeypatch.setattr(roi_align, "GRAD_CHANNELS_LAST", channels_last_grad)
    features = _pyramid(3, sizes=sizes)
    boxes = _boxes(3)
    kwargs = {"output_size": (3, 4), "sampling_ratio": sampling_ratio, "canonical_scale": 32, "canonical_level": 3}
    ker = [f.clone().requires_grad_(True) for f in features]
    ref = [f.clone().requires_grad_(True) for f in features]
    out = _kernel(ker, boxes, **kwargs)
    with aco_kernels.dispatch_mode("reference"):
        expected = _kernel(ref, boxes, **kwargs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(ker, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_rois_tensor_and_empty_boxes(kernel_path):
    features = [f.requires_grad_(True) for f in _pyramid(4)]
    out = aco_kernels.multiscale_roi_align(features, torch.zeros(0, 5), IMAGE_SHAPES)
    assert out.shape == (0, 5, 7, 7)
    out.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() == 0 for f in features)


def test_gradcheck_fp64(kernel_path):
    features = [f.requires_grad_(True) for f in _pyramid(5, channels=2, sizes=[(9, 11), (5, 6)], dtype=torch.float64)]
    boxes = [b.double() for b in _boxes(5, per_image=3)]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), dtype=torch.float64), b], dim=1)
                      for i, b in enumerate(boxes)])

    def fn(a, b):
        return aco_kernels.multiscale_roi_align([a, b], rois, [(36, 44)], output_size=2, sampling_ratio=2,
                                                canonical_scale=32, canonical_level=3)

    assert torch.autograd.gradcheck(fn, features, fast_mode=True)


def test_reference_equals_torchvision_single_level():
    features = _pyramid(6, sizes=LEVEL_SIZES[:1])
    boxes = _boxes(6)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    out = multiscale_roi_align_reference(features, rois, [0.25], (7, 7), 0, aligned=True)
    torch.testing.assert_close(out, roi_align(features[0], rois, (7, 7), 0.25, 0, aligned=True), rtol=1e-5, atol=1e-5)
