"""Counting-view overhead: a DPSNet training step against plain torchvision FasterRCNN, same backbone and size.

Run with ``make bench`` (or ``pytest packages/dpsnet/benchmarks --benchmark-enable``). Both models use the
``cpu-small`` preset's backbone (small body + 64-channel FPN, channels-last), anchors, RPN levels and sizes,
box-head sizes and RoIAlign sampling ratio, at the preset's input size (384 px) with 4 images of about 12 boxes each. The baseline uses
torchvision's own ``MultiScaleRoIAlign`` and RPN; DPSNet adds
the counting view (projections, pyramid_fuse, head, density targets and losses), the ignore-aware samplers and
the aco_kernels RoI pooler. The summary line prints the overhead; set ``DPSNET_BENCH_THREADS`` to pin threads.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from dpsnet import dpsnet_model
from dpsnet.backbone import build_backbone
from dpsnet.config import make_config, model_kwargs

TIMES: dict[str, float] = {}
NUM_CLASSES = 25  # 24 SKUs of the mini world + background


def _kwargs():
    return model_kwargs(make_config("cpu-small"))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = _kwargs()["max_size"]
    images = [torch.rand(3, size, size, generator=g) for _ in range(4)]
    targets = []
    for _ in images:
        xy = torch.rand(12, 2, generator=g) * size * 0.78
        boxes = torch.cat([xy, xy + size * (0.08 + torch.rand(12, 2, generator=g) * 0.14)], 1).clamp(max=size)
        targets.append({"boxes": boxes, "labels": torch.randint(1, NUM_CLASSES, (12,), generator=g)})
    return images, targets


def dpsnet():
    torch.manual_seed(0)
    return dpsnet_model(NUM_CLASSES, **_kwargs()).train()


class _ChannelsLast(nn.Module):
    """The preset's ``model.channels_last``: the backbone sees a channels-last batch."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone, self.out_channels = backbone, backbone.out_channels

    def forward(self, x):
        return self.backbone(x.contiguous(memory_format=torch.channels_last))


class _RPNLevels(nn.Module):
    """The preset's ``model.rpn_levels``: torchvision's RPN shown only those pyramid levels."""

    def __init__(self, rpn: nn.Module, levels):
        super().__init__()
        self.rpn, self.levels = rpn, tuple(levels)

    def forward(self, images, features, targets=None):
        return self.rpn(images, OrderedDict((k, features[k]) for k in self.levels), targets)


def torchvision_faster_rcnn():
    torch.manual_seed(0)
    kw = _kwargs()
    backbone = build_backbone("small", out_channels=kw["fpn_channels"], small_channels=tuple(kw["small_channels"]),
                              norm=kw["norm"])
    if kw["channels_last"]:
        backbone = _ChannelsLast(backbone)
    sizes, levels = kw["anchor_sizes"], kw["rpn_levels"]
    per_level = len(sizes) // len(levels)
    anchors = AnchorGenerator(tuple(tuple(sizes[i * per_level:(i + 1) * per_level]) for i in range(len(levels))),
                              (tuple(kw["aspect_ratios"]),) * len(levels))
    rep = kw["box_representation_size"]
    model = FasterRCNN(
        backbone, None, min_size=kw["min_size"], max_size=kw["max_size"], rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=kw["rpn_pre_nms_top_n_train"], rpn_post_nms_top_n_train=kw["rpn_post_nms_top_n_train"],
        rpn_batch_size_per_image=kw["rpn_batch_size_per_image"], box_batch_size_per_image=kw["box_batch_size_per_image"],
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=kw["roi_sampling_ratio"]),
        box_head=TwoMLPHead(backbone.out_channels * 49, rep), box_predictor=FastRCNNPredictor(rep, NUM_CLASSES),
    )
    model.rpn = _RPNLevels(model.rpn, levels)
    return model.train()


def _step(model, optimizer, images, targets):
    losses = model(images, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


@pytest.mark.parametrize("name", ["torchvision", "dpsnet"])
def test_train_step(benchmark, name):
    if os.environ.get("DPSNET_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["DPSNET_BENCH_THREADS"]))
    model = dpsnet() if name == "dpsnet" else torchvision_faster_rcnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images, targets = _batch()
    benchmark.pedantic(_step, args=(model, optimizer, images, targets), rounds=15, iterations=1, warmup_rounds=3)
    TIMES[name] = benchmark.stats.stats.median


def test_summary():
    if len(TIMES) < 2:
        pytest.skip("run the whole file to compare")
    overhead = TIMES["dpsnet"] / TIMES["torchvision"] - 1
    size = _kwargs()["max_size"]
    print(f"\ntraining step, cpu-small, 4 x {size} px, {torch.get_num_threads()} threads: torchvision "
          f"{TIMES['torchvision'] * 1000:.0f} ms, DPSNet {TIMES['dpsnet'] * 1000:.0f} ms, overhead {overhead:+.1%}")
