"""The plain-torch RoIAlign gather (aco_kernels.gather, ``multiscale_roi_align(method="gather")``) against
torchvision's ``roi_align`` and ``MultiScaleRoIAlign``: outputs and gradients, several seeds, edge boxes."""

import pytest
import torch

import aco_kernels
from aco_kernels.gather import gather_roi_align

torchvision = pytest.importorskip("torchvision")
from torchvision.ops import MultiScaleRoIAlign, roi_align  # noqa: E402

SHAPES = [(192, 160), (180, 150), (192, 156)]


def _case(seed, levels=4, channels_last=False):
    """Pyramid levels of three images and their boxes with the edge cases: partly or wholly outside the image,
    thinner than a pixel, empty, the whole image, and an image without boxes."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for i in range(levels):
        f = torch.randn(3, 5, 48 >> i, 40 >> i, generator=g)
        feats.append((f.contiguous(memory_format=torch.channels_last) if channels_last else f).requires_grad_())
    boxes = []
    for n, (h, w) in zip((14, 0, 9), SHAPES, strict=True):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([190.0, 230.0]) - 30
        wh = torch.rand(n, 2, generator=g) ** 2 * 140
        b = torch.cat([xy, xy + wh], 1)
        edges = torch.tensor([[3.0, 4.0, 3.3, 24.0], [5.0, 2.0, 30.0, 2.2],  # sub-pixel sides
                              [5.0, 6.0, 5.0, 6.0], [0.0, 0.0, w, h],  # empty, the whole image
                              [w - 3.0, h - 2.0, w + 5.0, h + 9.0], [-60.0, -50.0, -40.0, -45.0]])  # outside
        boxes.append(torch.cat([edges[:n], b[len(edges):]]) if n else b)
    return feats, boxes


def _rois(boxes):
    return torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_gather_matches_torchvision_roi_align(seed, aligned, sampling_ratio):
    """One level: ``gather_roi_align`` against ``torchvision.ops.roi_align``, forward and backward."""
    feats, boxes = _case(seed, levels=1)
    rois = _rois(boxes)
    level = feats[0]
    out = gather_roi_align([level], rois, torch.zeros(len(rois), dtype=torch.int64), [0.25], (5, 4),
                           sampling_ratio, aligned)
    ref = roi_align(level, rois, (5, 4), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    weight = torch.linspace(-1, 1, out.numel()).view_as(out)
    (grad,) = torch.autograd.grad((out * weight).sum(), [level])
    (ref_grad,) = torch.autograd.grad((ref * weight).sum(), [level])
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sampling_ratio", [1, 2])
@pytest.mark.parametrize("levels", [1, 4])
def test_gather_method_matches_torchvision_pooler(seed, sampling_ratio, levels):
    """Several levels: ``multiscale_roi_align(method="gather")`` against torchvision's MultiScaleRoIAlign (its
    level rule too), outputs and every level's gradient; channels-last levels on the gather's side."""
    names = [str(i) for i in range(levels)]
    results = []
    for gather in (False, True):
        feats, boxes = _case(seed, levels, channels_last=gather)
        if gather:
            out = aco_kernels.multiscale_roi_align(feats, boxes, SHAPES, sampling_ratio=sampling_ratio,
                                                   aligned=False, method="gather")
        else:
            out = MultiScaleRoIAlign(names, 7, sampling_ratio)(dict(zip(names, feats, strict=True)), boxes, SHAPES)
        weight = torch.linspace(-1, 1, out.numel()).view_as(out)
        results.append((out, torch.autograd.grad((out * weight).sum(), feats)))
    (ref, ref_grads), (out, grads) = results
    assert out.shape == ref.shape == (23, 5, 7, 7)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_gather_method_matches_the_reference_aligned():
    feats, boxes = _case(4)
    out = aco_kernels.multiscale_roi_align(feats, boxes, SHAPES, sampling_ratio=2, method="gather")
    with aco_kernels.dispatch_mode("reference"):
        ref = aco_kernels.multiscale_roi_align(feats, boxes, SHAPES, sampling_ratio=2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gather_is_deterministic_under_bf16_autocast():
    """Same inputs, same outputs and gradients, bit for bit, with bfloat16 levels under autocast (float32 out)."""
    runs = []
    for _ in range(2):
        feats, boxes = _case(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = aco_kernels.multiscale_roi_align([f.bfloat16() for f in feats], boxes, SHAPES, sampling_ratio=1,
                                                   method="gather")
        assert out.dtype == torch.float32
        runs.append((out, torch.autograd.grad(out.square().sum(), feats)))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gather_refuses_adaptive_sampling_and_unknown_methods_and_takes_no_rois():
    feats, boxes = _case(0, levels=1)
    rois = _rois(boxes)
    with pytest.raises(ValueError, match="sampling_ratio"):
        gather_roi_align(feats, rois, torch.zeros(len(rois), dtype=torch.int64), [0.25], (5, 4), 0)
    with pytest.raises(ValueError, match="method"):
        aco_kernels.multiscale_roi_align(feats, boxes, SHAPES, method="fast")
    empty = gather_roi_align(feats, rois[:0], torch.zeros(0, dtype=torch.int64), [0.25], (7, 7), 1)
    assert empty.shape == (0, 5, 7, 7) and empty.dtype == torch.float32
