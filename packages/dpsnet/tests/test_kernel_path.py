"""The aco_kernels kernel path (Triton, run by the interpreter on CPU) against the torch references."""

import pytest
import torch

from aco_kernels import dispatch_mode
from aco_kernels._dispatch import interpreting, triton_available

from .test_model import batch, tiny_model


def forward_backward(mode):
    model = tiny_model(min_size=64, max_size=64, rpn_post_nms_top_n_train=16, box_batch_size_per_image=16,
                       roi_pool="aco").train()
    images, targets = batch()
    torch.manual_seed(5)
    with dispatch_mode(mode):
        losses = model(images, targets)
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad():
            out = model(images)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads, out


@pytest.mark.slow
def test_kernel_path_matches_reference_on_a_tiny_model():
    if not (triton_available() and (interpreting() or torch.cuda.is_available())):
        pytest.skip("needs triton with TRITON_INTERPRET=1 (set by this package's conftest) to run kernels on CPU")
    ref_losses, ref_grads, ref_out = forward_backward("reference")
    ker_losses, ker_grads, ker_out = forward_backward("triton")
    for key, value in ref_losses.items():
        torch.testing.assert_close(ker_losses[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert ref_grads.keys() == ker_grads.keys()
    for key, value in ref_grads.items():
        torch.testing.assert_close(ker_grads[key], value, rtol=1e-3, atol=1e-5, msg=key)
    for a, b in zip(ref_out, ker_out, strict=True):
        torch.testing.assert_close(b["counts"], a["counts"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-4, atol=1e-5)
