"""Backbones with a feature pyramid: torchvision ResNet + FPN, and a small CNN + FPN that trains on a CPU.

Every backbone returned here is an ``nn.Module`` mapping images ``Tensor[B, 3, H, W]`` to an ``OrderedDict``
of pyramid levels ``"0"`` .. ``"3"`` (strides 4, 8, 16, 32: P2-P5) and ``"pool"`` (stride 64: P6), each with
``out_channels`` channels, like ``torchvision.models.detection.backbone_utils.resnet_fpn_backbone``.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONES = ("small", *RESNETS)
NORMS = ("batch", "frozen", "group")


def norm_layer(norm: str):
    """The normalisation layer class for ``norm`` in ``batch | frozen | group`` (group: 8 groups)."""
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "frozen":
        return FrozenBatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm should be one of {NORMS}, got {norm!r}")


def _conv_norm_relu(cin: int, cout: int, stride: int, norm) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(inplace=True))


class SmallBody(nn.Module):
    """A plain CNN body: a stride-4 stem then four stages (strides 4, 8, 16, 32) of two 3x3 convs each.

    ``forward`` returns an ``OrderedDict`` ``{"0": C2, "1": C3, "2": C4, "3": C5}``. ``channels`` gives
    each stage's width; ``pooled_features`` (global average of C5) feeds a classifier when pretraining.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256), norm: str = "batch"):
        super().__init__()
        layer = norm_layer(norm)
        self.channels, self.norm = tuple(channels), norm
        self.stem = nn.Sequential(_conv_norm_relu(3, channels[0] // 2, 2, layer),
                                  _conv_norm_relu(channels[0] // 2, channels[0], 2, layer))
        stages = []
        cin = channels[0]
        for i, cout in enumerate(channels):
            stages.append(nn.Sequential(_conv_norm_relu(cin, cout, 1 if i == 0 else 2, layer),
                                        _conv_norm_relu(cout, cout, 1, layer)))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(x)
        out = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[str(i)] = x
        return out

    def pooled_features(self, x: Tensor) -> Tensor:
        """Tensor[B, channels[-1]]: the global average of the last stage."""
        return self.forward(x)[str(len(self.stages) - 1)].mean(dim=(2, 3))


class BodyWithFPN(nn.Module):
    """A body returning ``{"0".."3"}`` followed by torchvision's FPN with a P6 max-pool level."""

    def __init__(self, body: SmallBody, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


def load_torch_file(path: str | Path, what: str, hint: str) -> dict:
    """A dict saved with ``torch.save``, loaded with ``weights_only=True``; a file that does not load (truncated,
    foreign, a pickle of other objects) or holds no dict raises a one-line ValueError: ``path``, ``what`` it is
    not, then ``hint``."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, MemoryError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read this {what} ({err.strerror or err}); {hint}") from None
    except pickle.UnpicklingError:  # torch's message is about weights_only; say what the file is instead
        raise ValueError(f"{path}: not a readable {what} (not a torch file, or one holding more than tensors); "
                         f"{hint}") from None
    except Exception as err:  # any other loading failure (truncated, corrupt) means: not such a file
        reason = (str(err).strip().splitlines() or [""])[0][:100]
        raise ValueError(f"{path}: not a readable {what} ({type(err).__name__}: {reason}); {hint}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: not a readable {what} (holds a {type(content).__name__}); {hint}")
    return content


def load_weights(path: str | Path) -> dict:
    """A state dict from a local file (``torch.save`` of a state dict, or a checkpoint holding ``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    state = load_torch_file(path, "weights file", "give model.backbone_weights a `dpsnet pretrain` file")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def build_backbone(
    name: str = "small",
    *,
    weights: str | Path | None = None,
    out_channels: int | None = None,
    small_channels: tuple[int, ...] = (32, 64, 128, 256),
    norm: str | None = None,
    trainable_layers: int = 3,
) -> nn.Module:
    """Build ``name`` (``small`` or ``resnet18|34|50|101``) with an FPN (P2-P6).

    Args:
        weights: a local weights file for the body (torchvision ResNet ImageNet weights, or the ``small`` body
            from ``dpsnet pretrain``); ``None`` starts from random weights (nothing is downloaded).
        out_channels: FPN width (default 64 for ``small``, 256 for ResNets).
        norm: ``batch``, ``frozen`` or ``group`` (default: ``batch`` for ``small``, ``frozen`` for ResNets).
        trainable_layers: ResNet stages left trainable (0-5), as in torchvision.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone should be one of {BACKBONES}, got {name!r}")
    state = load_weights(weights) if weights else None
    if name == "small":
        body = SmallBody(tuple(small_channels), norm=norm or "batch")
        if state is not None:
            state = {k.removeprefix("body."): v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
            body.load_state_dict(state)
        return BodyWithFPN(body, out_channels or 64)
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers should be in [0, 5], got {trainable_layers}")
    net = getattr(resnet, name)(weights=None, norm_layer=norm_layer(norm or "frozen"))
    if state is not None:
        net.load_state_dict(state)
    trainable = ("layer4", "layer3", "layer2", "layer1", "conv1", "bn1")[:trainable_layers + (trainable_layers == 5)]
    for param_name, param in net.named_parameters():
        if not param_name.startswith(trainable):
            param.requires_grad_(False)
    stage2 = net.inplanes // 8
    return BackboneWithFPN(net, {f"layer{k}": str(k - 1) for k in range(1, 5)},
                           [stage2 * 2 ** i for i in range(4)], out_channels or 256, extra_blocks=LastLevelMaxPool())
