"""The counting view: pyramid levels fused to one scale, a small conv head, per-class density maps.

A density map integrates to the number of objects of its class. Ground-truth maps are rendered from boxes by
``aco_kernels.density_render`` (the toolkit's one sigma rule). The head predicts maps multiplied by
``density_scale`` (the raw per-pixel densities are tiny), so counts are ``map.sum() / density_scale``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import aco_kernels


def density_targets(
    boxes: Sequence[Tensor],
    classes: Sequence[Tensor],
    map_size: tuple[int, int],
    *,
    num_classes: int,
    stride: float,
    sigma_scale: float = 0.15,
    min_sigma: float = 1.0,
    sigma_rule: str = "area",
    check: bool = True,
) -> Tensor:
    """Ground-truth density maps Tensor[B, num_classes, H, W]; each box adds exactly 1 to its class map.

    Args:
        boxes (list[Tensor[K_i, 4]]): (x1, y1, x2, y2) in (resized) image pixels, one tensor per image.
        classes (list[Tensor[K_i] int]): counting class in ``[0, num_classes)`` per box.
        map_size ((H, W)): density map size; ``stride`` image pixels per map pixel.
        sigma_scale, min_sigma, sigma_rule: each box's Gaussian (``aco_kernels.density_render``).
        check: verify the classes' range (one host sync on CUDA; see ``aco_kernels.density_render``).
    """
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    all_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]).float() if len(boxes) else torch.zeros(0, 4)
    centers = (all_boxes[:, :2] + all_boxes[:, 2:]) / 2
    sizes = (all_boxes[:, 2:] - all_boxes[:, :2]).clamp(min=0)
    labels = torch.cat([c.reshape(-1) for c in classes]).to(torch.int64) if len(classes) else torch.zeros(0)
    batch_index = torch.cat([torch.full((len(b),), i, dtype=torch.int64, device=device) for i, b in enumerate(boxes)])
    return aco_kernels.density_render(centers, sizes, labels.to(torch.int64), batch_index, num_images=len(boxes),
                                      num_classes=num_classes, map_size=map_size, stride=stride,
                                      sigma_scale=sigma_scale, min_sigma=min_sigma, sigma_rule=sigma_rule,
                                      check=check)


def ignore_mask(ignore_boxes: Sequence[Tensor], map_size: tuple[int, int], stride: float,
                labelled_boxes: Sequence[Tensor] | None = None) -> Tensor:
    """Tensor[B, 1, H, W] float: 0 where a map pixel's centre lies inside an ignore box and inside no labelled
    box, 1 elsewhere.

    A pseudo-labelled image's uncertain detections become ignore regions; one may overlap a confidently labelled
    product (a lower-scoring duplicate of another class, say), whose density must stay supervised there.

    Args:
        ignore_boxes (list[Tensor[M_i, 4]]): ignore regions (x1, y1, x2, y2) in image pixels, per image.
        labelled_boxes (list[Tensor[K_i, 4]] | None): the labelled objects' boxes, per image; they win over
            ignore regions.
    """
    height, width = map_size
    device = ignore_boxes[0].device
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride

    def covered(boxes: Tensor) -> Tensor:
        boxes = boxes.reshape(-1, 4).float()
        inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] <= boxes[:, 3:4])  # [M, H]
        inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] <= boxes[:, 2:3])  # [M, W]
        return (inside_y[:, :, None] & inside_x[:, None, :]).any(dim=0)

    labelled = labelled_boxes if labelled_boxes is not None else [b.new_zeros(0, 4) for b in ignore_boxes]
    masks = [(~(covered(ignore) & ~covered(kept))).float() for ignore, kept in zip(ignore_boxes, labelled, strict=True)]
    return torch.stack(masks)[:, None]


def density_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    density_scale: float,
    pixel_weight: float = 1.0,
    count_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Per-pixel MSE plus a count loss on the integrals, both restricted to ``mask``.

    Args:
        pred (Tensor[B, C, H, W]): predicted maps, scaled by ``density_scale``.
        target (Tensor[B, C, H, W]): ground-truth densities (unscaled; each object sums to 1).
        mask (Tensor[B, 1, H, W]): 1 where pixels count, 0 in ignore regions.

    Returns:
        ``{"loss_density": pixel_weight * mean_{valid pixels} sum_{classes} (pred - scale * target)^2,
        "loss_count": count_weight * mean_{images, classes} smooth_l1(sum(pred) / scale, sum(target))}``.
    """
    pred = pred.float()
    scaled = target * density_scale
    # Summed over classes, averaged over valid pixels: the gradient per map does not shrink with more classes.
    pixel = (((pred - scaled) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)
    pred_counts = (pred * mask).sum(dim=(2, 3)) / density_scale
    true_counts = (target * mask).sum(dim=(2, 3))
    count = F.smooth_l1_loss(pred_counts, true_counts, beta=1.0)
    return {"loss_density": pixel * pixel_weight, "loss_count": count * count_weight}


def crop_counts(density: Tensor, image_sizes: Sequence[tuple[int, int]], stride: float, density_scale: float) -> Tensor:
    """Per-image, per-class counts Tensor[B, C]: each map summed over its image's area (padding excluded),
    divided by ``density_scale`` and clamped at 0."""
    counts = []
    for maps, (h, w) in zip(density, image_sizes, strict=True):
        mh, mw = max(1, round(h / stride)), max(1, round(w / stride))
        counts.append(maps[:, :mh, :mw].float().sum(dim=(1, 2)) / density_scale)
    return torch.stack(counts).clamp(min=0.0)


def _scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward; its gradient times ``scale`` in the backward."""
    if scale == 1.0 or not x.requires_grad:
        return x
    if scale == 0.0:
        return x.detach()
    return x * scale + x.detach() * (1.0 - scale)


class CountingView(nn.Module):
    """1x1 projections of the chosen pyramid levels, ``aco_kernels.pyramid_fuse`` to ``stride``, a conv head.

    Args:
        in_channels: pyramid width. num_classes: density maps (SKUs, supercategories or one object class).
        levels: pyramid keys fused, finest first, e.g. ``("1", "2", "3")`` (strides 8, 16, 32), or the released
            DPSNet's ``("0", "1", "2", "3", "pool")`` (P2-P6) at stride 8.
        stride: the fused map's stride in image pixels. channels: head width. num_convs: 3x3 convs in the head,
            each followed by batch normalisation and a ReLU (in eval its running statistics, so an image's maps do
            not depend on the batch or its padding; without it the ReLUs could all die, leaving a constant map).
        feature_grad: the share of the view's gradient that reaches the pyramid features it reads (and through
            them the backbone): 1 all, 0 none (the features are detached); the view's own layers get all of it.
            The value is the same; only the backward is scaled.
    """

    def __init__(self, in_channels: int, num_classes: int, *, levels: Sequence[str] = ("1", "2", "3"),
                 stride: int = 8, channels: int = 64, num_convs: int = 2, feature_grad: float = 1.0):
        super().__init__()
        if not 0.0 <= feature_grad <= 1.0:
            raise ValueError(f"feature_grad should be in [0, 1], got {feature_grad}")
        self.feature_grad = float(feature_grad)
        self.levels = tuple(levels)
        self.stride = stride
        self.projections = nn.ModuleList(nn.Conv2d(in_channels, channels, 1) for _ in self.levels)
        convs = []
        for _ in range(num_convs):
            convs += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                      nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*convs)
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: OrderedDict[str, Tensor], padded_size: tuple[int, int]) -> Tensor:
        """Density maps Tensor[B, num_classes, ceil(H / stride), ceil(W / stride)] for padded images [H, W]."""
        size = (-(-padded_size[0] // self.stride), -(-padded_size[1] // self.stride))
        device_type = features[self.levels[0]].device.type
        # In float32 under autocast too: a count sums a map's pixels, and bfloat16 maps moved held-out
        # synthesized images' rounded counts (41% -> 38% right); the head is small.
        with torch.autocast(device_type, enabled=False):
            projected = [proj(_scale_grad(features[key].float(), self.feature_grad))
                         for proj, key in zip(self.projections, self.levels, strict=True)]
            fused = aco_kernels.pyramid_fuse(projected, size)
            return self.predictor(self.convs(fused))
