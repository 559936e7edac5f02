import pytest
import torch
import torch.nn.functional as F

import aco_kernels

CASES = [
    # (level sizes, target size)
    ([(7, 9)], (7, 9)),  # one level, no resize
    ([(4, 5)], (9, 11)),  # one level, upsampled
    ([(13, 11), (7, 6), (4, 3)], (13, 11)),  # odd FPN-like pyramid to the finest level
    ([(5, 5), (10, 10), (3, 7)], (6, 8)),  # down- and upsampling mixed
    ([(1, 1), (2, 3)], (5, 4)),  # 1-pixel level
    # several 16x32 tiles, strong up- and downsampling, one axis resized only (the backward's span rule)
    ([(20, 40), (11, 21), (3, 2), (20, 9)], (20, 40)),
    ([(50, 45), (40, 70)], (7, 9)),
    ([(2, 3), (1, 20)], (20, 35)),
    # P2-P6 fused at P3 (the released DPSNet's counting view): P2 downsampled, P4-P6 upsampled, P6 one row
    ([(40, 52), (20, 26), (10, 13), (5, 7), (3, 4)], (20, 26)),
    ([(24, 34), (12, 17), (6, 9), (3, 5), (1, 3)], (12, 17)),
]


def _expected(levels, size, weights):
    return sum(w * F.interpolate(lv, size=size, mode="bilinear", align_corners=False)
               for lv, w in zip(levels, weights, strict=True))


def _check_against_interpolate(sizes, target, g, batch=2, channels=3):
    """Forward and every level's gradient of the op against ``F.interpolate``, on random levels from ``g``."""
    levels = [torch.randn(batch, channels, h, w, generator=g) for h, w in sizes]
    weights = [float(x) for x in torch.rand(len(sizes), generator=g) + 0.5]
    ref_levels = [lv.clone().requires_grad_(True) for lv in levels]
    ker_levels = [lv.clone().requires_grad_(True) for lv in levels]
    ref = _expected(ref_levels, target, weights)
    out = aco_kernels.pyramid_fuse(ker_levels, target, weights)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=g)
    ref.backward(grad)
    out.backward(grad)
    for a, b in zip(ker_levels, ref_levels, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sizes,target", CASES)
def test_pyramid_fuse_matches_interpolate(kernel_path, sizes, target):
    for seed in (0, 1):
        _check_against_interpolate(sizes, target, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sizes,target", [*CASES, ([(9, 7), (40, 11), (5, 3), (3, 2)], (40, 11))])
def test_pyramid_fuse_per_level_backward_matches_interpolate(kernel_path, monkeypatch, sizes, target):
    """The backward with one y pass per level (``FUSED_BACKWARD = False``)."""
    from aco_kernels.ops import pyramid_fuse as module

    monkeypatch.setattr(module, "FUSED_BACKWARD", False)
    _check_against_interpolate(sizes, target, torch.Generator().manual_seed(5), batch=1, channels=2)


def _one_plane_per_program(monkeypatch):
    """The rows kernels with the GPU's one plane per program (under the interpreter, which pays per program,
    they take 8, so that the other tests' 2 x 3 planes are a partial group)."""
    import triton

    from aco_kernels.ops import pyramid_fuse as module

    monkeypatch.setattr(module._pyramid_fuse_rows_kernel, "configs",
                        [triton.Config({"BLOCK_C": 1, "BLOCK_H": 16, "BLOCK_W": 64}, num_warps=2)])
    monkeypatch.setattr(module._pyramid_fuse_bwd_rows_kernel, "configs",
                        [triton.Config({"BLOCK_C": 1, "BLOCK_T": 8, "BLOCK_W": 32}, num_warps=1)])


@pytest.mark.parametrize("sizes,target", [CASES[2], ([(40, 11), (9, 7), (3, 2), (40, 5)], (40, 11))])
def test_pyramid_fuse_one_plane_without_prefetch_matches_interpolate(kernel_path, monkeypatch, sizes, target):
    """The rows kernels with one plane per program, and without loading one row ahead (``PREFETCH = False``)."""
    from aco_kernels.ops import pyramid_fuse as module

    _one_plane_per_program(monkeypatch)
    monkeypatch.setattr(module, "PREFETCH", False)
    _check_against_interpolate(sizes, target, torch.Generator().manual_seed(7), batch=1, channels=2)


@pytest.mark.parametrize("sizes,target", [CASES[3], CASES[5], ([(40, 11), (9, 7), (3, 2), (40, 5)], (40, 11))])
def test_pyramid_fuse_coarse_rows_prefetched_match_interpolate(kernel_path, monkeypatch, sizes, target):
    """``PREFETCH_COARSE``: each coarser level's next source row loaded ahead, used rows later; walked over
    strips of 16 rows with levels that move one source row at a time, jump (downsampled in y) or stay."""
    from aco_kernels.ops import pyramid_fuse as module

    monkeypatch.setattr(module, "PREFETCH_COARSE", True)
    _check_against_interpolate(sizes, target, torch.Generator().manual_seed(10), batch=1, channels=2)
    _one_plane_per_program(monkeypatch)  # and with one plane per program
    _check_against_interpolate(sizes, target, torch.Generator().manual_seed(11), batch=1, channels=2)


def test_pyramid_fuse_fused_backward_strips_and_halos(kernel_path):
    """The one-pass y backward over many strips (8 rows each here): strong upsampling (a 3-row level under
    a 40-row output: halos of 30 rows), a level equal in y but not in x, and no level at the output size."""
    g = torch.Generator().manual_seed(6)
    for sizes, target in [([(40, 11), (9, 7), (3, 2), (40, 5)], (40, 11)), ([(17, 6), (5, 5), (2, 9)], (41, 6))]:
        _check_against_interpolate(sizes, target, g, batch=2, channels=1)


def test_pyramid_fuse_default_weights_and_reference_path(kernel_path):
    levels = [torch.randn(1, 2, 6, 5), torch.randn(1, 2, 3, 3)]
    out = aco_kernels.pyramid_fuse(levels, (6, 5))
    with aco_kernels.dispatch_mode("reference"):
        ref = aco_kernels.pyramid_fuse(levels, (6, 5))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_pyramid_fuse_empty_batch(kernel_path):
    levels = [torch.randn(0, 3, 4, 4, requires_grad=True), torch.randn(0, 3, 2, 2, requires_grad=True)]
    out = aco_kernels.pyramid_fuse(levels, (4, 4), [1.0, 2.0])
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert levels[1].grad.shape == (0, 3, 2, 2)


def test_pyramid_fuse_gradcheck_fp64(kernel_path):
    g = torch.Generator().manual_seed(3)
    levels = [torch.randn(1, 2, h, w, generator=g, dtype=torch.float64, requires_grad=True)
              for h, w in [(4, 3), (2, 2)]]
    assert torch.autograd.gradcheck(lambda a, b: aco_kernels.pyramid_fuse([a, b], (5, 4), [0.7, 1.3]), levels,
                                    fast_mode=True)


def test_pyramid_fuse_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="levels"):
        aco_kernels.pyramid_fuse([torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3)], (3, 3))

