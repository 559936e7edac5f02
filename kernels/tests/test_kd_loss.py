import pytest
import torch

import aco_kernels
from aco_kernels import dispatch_mode
from aco_kernels.reference import kd_loss_reference


def _inputs(n, c, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(n, c, generator=g) * 3).to(dtype)
    teacher = (torch.randn(n, c, generator=g) * 3).to(dtype)
    labels = torch.randint(0, c, (n,), generator=g)
    weights = torch.rand(n, generator=g) + 0.5
    return student, teacher, labels, weights


@pytest.fixture(params=[True, False], ids=["grad-in-forward", "backward-kernel"])
def grad_mode(request, monkeypatch):
    """Both gradient paths: written by the forward kernel (the default) or by a separate backward kernel."""
    from aco_kernels.ops import kd_loss as module

    monkeypatch.setattr(module, "GRAD_IN_FORWARD", request.param)
    return request.param


def _both(student, teacher, **kwargs):
    s_ref = student.clone().requires_grad_(True)
    s_ker = student.clone().requires_grad_(True)
    ref = kd_loss_reference(s_ref, teacher, **kwargs)
    with dispatch_mode("triton"):
        out = aco_kernels.kd_loss(s_ker, teacher, **kwargs)
    return ref, out, s_ref, s_ker


@pytest.mark.parametrize("n,c", [(1, 1), (5, 7), (13, 201), (3, 4500)])
@pytest.mark.parametrize("mixed", [False, True])
def test_kd_loss_matches_reference(kernel_path, grad_mode, n, c, mixed):
    for seed in (0, 1):
        student, teacher, labels, weights = _inputs(n, c, seed)
        kwargs = {"temperature": 2.5}
        if mixed:
            labels[0] = -100
            kwargs.update(labels=labels, alpha=0.3, weights=weights)
        ref, out, s_ref, s_ker = _both(student, teacher, **kwargs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        ref.backward()
        out.backward()
        torch.testing.assert_close(s_ker.grad, s_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "none", "mean"])
def test_kd_loss_reductions(kernel_path, grad_mode, reduction):
    student, teacher, labels, weights = _inputs(6, 11, 3)
    ref, out, s_ref, s_ker = _both(student, teacher, temperature=1.0, labels=labels, alpha=0.7, weights=weights,
                                   reduction=reduction)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.rand_like(ref)
    ref.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(s_ker.grad, s_ref.grad, rtol=1e-5, atol=1e-6)


def test_kd_loss_empty(kernel_path):
    student = torch.zeros(0, 5, requires_grad=True)
    out = aco_kernels.kd_loss(student, torch.zeros(0, 5))
    assert out.item() == 0.0
    out.backward()
    assert student.grad.shape == (0, 5)


def test_kd_loss_equal_logits_is_zero(kernel_path):
    student, _, _, _ = _inputs(4, 9, 5)
    out = aco_kernels.kd_loss(student, student.clone(), temperature=3.0)
    assert abs(out.item()) < 1e-5


def test_kd_loss_gradcheck_fp64(kernel_path, grad_mode):
    student, teacher, labels, weights = _inputs(3, 5, 7, torch.float64)
    student.requires_grad_(True)

    def fn(s):
        return aco_kernels.kd_loss(s, teacher, temperature=2.0, labels=labels, alpha=0.4, weights=weights.double())

    assert torch.autograd.gradcheck(fn, (student,))


def test_kd_loss_reference_on_cpu_by_default():
    student, teacher, _, _ = _inputs(4, 6, 0)
    assert not aco_kernels.use_kernel(student)
    torch.testing.assert_close(aco_kernels.kd_loss(student, teacher), kd_loss_reference(student, teacher))
