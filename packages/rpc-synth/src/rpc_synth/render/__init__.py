"""``rpc-synth render``: translate synthesized checkout images toward the checkout domain.

Two methods share one ``apply``: a compact CycleGAN-style translator (``networks``, ``losses``, ``train``;
needs torch, the ``render`` extra) and per-channel histogram matching (``histogram``; numpy only).
``measure`` holds the domain-gap statistic and the product-preservation checks. Importing this package
does not import torch; only training and applying the translator do.
"""

from __future__ import annotations

from ..generate import InputError


def require_torch():
    """Import and return torch, or raise ``InputError`` saying how to install it (the CLI exits with 2)."""
    try:
        import torch
    except ImportError:
        raise InputError("the cyclegan translator needs torch: pip install 'rpc-synth[render]' "
                         "(or use --method histogram, which does not)") from None
    return torch
