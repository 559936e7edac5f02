"""ResNet generator and PatchGAN discriminator of the translator (small by default, every size configurable)."""

from __future__ import annotations

import torch
from torch import nn


def _conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    pad = kernel // 2
    return [nn.ReflectionPad2d(pad), nn.Conv2d(c_in, c_out, kernel, stride), nn.InstanceNorm2d(c_out, affine=True),
            nn.ReLU(inplace=True)]


class ResidualBlock(nn.Module):
    """Two 3x3 reflection-padded convolutions with instance norm, added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_norm_relu(channels, channels, 3), nn.ReflectionPad2d(1),
                                  nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image-to-image generator: 7x7 stem, ``downsamplings`` stride-2 steps, ``blocks`` residual blocks, back up.

    Input and output: ``Tensor[N, 3, H, W]`` in [-1, 1], with H and W multiples of ``2 ** downsamplings``
    (``translate_image`` pads). Upsampling is nearest + 3x3 conv (no transposed-conv checkerboards).
    With ``noise=True`` Gaussian noise of ``noise_init`` grey levels is added to the output (see ``noise_scale``):
    a fixed scale, or with ``noise_learned=True`` a learned one starting there.
    With ``residual=True`` the network predicts a change added to its input (clamped to [-1, 1]): it starts
    near the identity, which keeps products in place from the first iteration on.
    A per-pixel colour branch (two 1x1 convolutions on the raw input) is added before the output
    non-linearity: instance norm hides a crop's absolute colour from the convolutional trunk, and without
    this branch the generator cannot learn a colour cast that depends on the input colour (a yellow tray
    and a blue one need different changes); it then tends to paint blobs instead.
    """

    def __init__(self, channels: int = 16, blocks: int = 4, downsamplings: int = 2, residual: bool = True,
                 noise: bool = False, noise_init: float = 0.0, noise_learned: bool = False):
        super().__init__()
        if channels < 1 or blocks < 0 or downsamplings < 0:
            raise ValueError(f"generator sizes should be positive, got channels={channels}, blocks={blocks}, "
                             f"downsamplings={downsamplings}")
        self.residual, self.multiple = residual, 2 ** downsamplings
        layers = _conv_norm_relu(3, channels, 7)
        width = channels
        for _ in range(downsamplings):
            layers += _conv_norm_relu(width, width * 2, 3, stride=2)
            width *= 2
        layers += [ResidualBlock(width) for _ in range(blocks)]
        for _ in range(downsamplings):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_norm_relu(width, width // 2, 3)]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 3, 7)]
        self.net = nn.Sequential(*layers)
        self.colour = nn.Sequential(nn.Conv2d(3, channels, 1), nn.LeakyReLU(0.2, inplace=True),
                                    nn.Conv2d(channels, 3, 1))
        # Noise injection: a convolutional generator is deterministic, so it cannot add sensor noise (a large part
        # of what tells checkout photos from clean composites) without a random input; one scale per channel,
        # ``noise_init`` grey levels, multiplies standard normal noise added to the output. Learned, the adversarial
        # loss drove it down to 0.1-0.5 grey levels although the checkout images carry about 2 (rpc-synth README):
        # by default it is a fixed buffer (same state-dict key either way).
        scale = torch.full((1, 3, 1, 1), noise_init / 127.5)
        if noise and noise_learned:
            self.noise_scale = nn.Parameter(scale)
        else:
            self.register_buffer("noise_scale", scale if noise else None)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, add_noise: bool = True
                ) -> torch.Tensor:
        """Translate ``x``; ``generator`` draws the injected noise (the global RNG when None); ``add_noise=False``
        gives the noise-free translation (what the content losses compare)."""
        out = torch.tanh(self.net(x) + self.colour(x))
        out = (x + out if self.residual else out).clamp(-1, 1)
        return self.add_noise(out, generator) if add_noise else out

    def add_noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``y`` plus the learned-scale Gaussian noise (``y`` itself without noise injection), clamped to [-1, 1].
        The noise is drawn on ``generator``'s device and moved to ``y``'s: a CPU generator gives the same noise
        to a translator on any device."""
        if self.noise_scale is None:
            return y
        where = generator.device if generator is not None else y.device
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=where).to(y.device)
        return (y + self.noise_scale * noise).clamp(-1, 1)


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``layers`` stride-2 4x4 convolutions then two stride-1 ones; one real/fake score per patch.

    ``Tensor[N, 3, H, W]`` -> ``Tensor[N, 1, h, w]`` (h about H / 2**layers); with 3 layers each score sees
    a 70x70 px patch, as in pix2pix/CycleGAN. No normalisation layers, unlike theirs: on small crops of a
    nearly uniform tray, instance norm removes the tray's colour, which is most of what tells the domains
    apart here, and the generators then learn no colour cast.
    """

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        if channels < 1 or layers < 1:
            raise ValueError(f"discriminator sizes should be positive, got channels={channels}, layers={layers}")
        modules: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            modules += [nn.Conv2d(width, out, 4, stride, 1), nn.LeakyReLU(0.2, inplace=True)]
            width = out
        modules.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
