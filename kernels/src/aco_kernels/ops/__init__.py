"""Triton kernels, one module per op; importing one imports triton (the package itself does not)."""
