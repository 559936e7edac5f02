"""Losses of the translator: least-squares adversarial, cycle/identity L1, and product preservation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean of ``(scores - 1)**2`` for real targets, ``scores**2`` for fake ones."""
    return ((scores - (1.0 if real else 0.0)) ** 2).mean()


def image_gradients(images: torch.Tensor) -> torch.Tensor:
    """Sobel gradients of every colour channel: ``Tensor[N, C, H, W]`` -> ``Tensor[N, 2C, H, W]``.

    Colour, not only luminance: a pink blob on a yellow tray can have the tray's luminance.
    """
    channels = images.shape[1]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device) / 8
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(channels, 1, 1, 1)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels, groups=channels)


def preservation_loss(source: torch.Tensor, translated: torch.Tensor, masks: torch.Tensor,
                      background_weight: float = 0.5, color_weight: float = 0.2,
                      scales: tuple[int, ...] = (1, 4, 8)) -> torch.Tensor:
    """Keep products recognisable and add none: L1 between the colour edges of the two images at several
    scales, weighted 1 on product pixels and ``background_weight`` elsewhere, plus L1 of the colours on
    product pixels (times ``color_weight``).

    ``source``, ``translated``: ``Tensor[N, 3, H, W]`` in [-1, 1]; ``masks``: ``Tensor[N, 1, H, W]`` in {0, 1}
    (union of the visible instance masks). Fine edges carry a product's shape, print and text; edges of the
    average-pooled images (``scales``) catch blobs painted on the tray, which a colour cast or a smooth
    illumination change (what the checkout domain differs by) does not create. The colour term is kept
    small so casts can change but products cannot be repainted.
    """
    edges = torch.zeros((), device=source.device)
    for scale in scales:
        src, out, mask = (F.avg_pool2d(t, scale) if scale > 1 else t for t in (source, translated, masks))
        weight = mask + background_weight * (1 - mask)
        edges = edges + (weight * (image_gradients(src) - image_gradients(out)).abs().sum(1, keepdim=True)).mean()
    colour = ((source - translated).abs().mean(1, keepdim=True) * masks).sum() / masks.sum().clamp(min=1.0)
    return edges + color_weight * colour
