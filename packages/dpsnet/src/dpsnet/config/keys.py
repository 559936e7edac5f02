"""The config's keys: three typed sections (:class:`ModelSection`, :class:`DataSection`, :class:`TrainSection`)
whose fields are the keys, each with its type, default, one line of help and, where fixed, its valid values; the
flat views of them (:data:`SCHEMA`, :data:`DEFAULTS`, :data:`CHOICES`) and the retired keys (:data:`RETIRED`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, NamedTuple


def _key(default: Any, help_text: str, choices: tuple = ()) -> Any:
    """A config key: its default (whose type is the key's; lists take TOML lists or comma-separated values),
    its one line of help, and its valid values when they are a fixed set."""
    metadata = {"help": help_text, "choices": tuple(choices)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: the keyword arguments of :func:`dpsnet.model.dpsnet_model` (see :func:`model_kwargs`)."""

    backbone: str = _key("small",
        "Backbone: small (CPU-sized CNN) or resnet18, resnet34, resnet50, resnet101.",
        ("small", "resnet18", "resnet34", "resnet50", "resnet101"))
    backbone_weights: str = _key("",
        "Local weights file for the backbone body (ImageNet or `dpsnet pretrain`); empty: random.")
    fpn_channels: int = _key(0, "FPN width; 0: 64 for small, 256 for ResNets.")
    small_channels: Sequence[int] = _key([32, 64, 128, 256],
        "Stage widths of the small backbone (strides 4, 8, 16, 32).")
    norm: str = _key("",
        "Backbone normalisation: batch, frozen (frozen batch norm, for small batches) or group; empty: "
        "batch for small, frozen for ResNets.", ("", "batch", "frozen", "group"))
    trainable_layers: int = _key(3, "ResNet stages left trainable (0-5).")
    count_classes: str = _key("category",
        "Counting classes: category (one density map per SKU), supercategory or object.",
        ("category", "supercategory", "object"))
    min_size: Sequence[int] = _key([800],
        "Shorter image side after resizing; several values: one picked at random per training batch.")
    max_size: int = _key(1333, "Longest image side after resizing.")
    channels_last: bool = _key(False,
        "Run the backbone in channels-last memory layout (about 10% faster steps with CPU convolutions).")
    rpn_levels: Sequence[str] = _key(["0", "1", "2", "3", "pool"],
        "Pyramid levels the RPN proposes from (\"0\"-\"3\" = P2-P5, \"pool\" = P6); the box head still pools "
        "from P2-P5.")
    anchor_sizes: Sequence[int] = _key([32, 64, 128, 256, 512],
        "RPN anchor sizes (px), split evenly over model.rpn_levels in order: one per level, or e.g. two "
        "per level with twice as many.")
    aspect_ratios: Sequence[float] = _key([0.5, 1.0, 2.0], "RPN anchor aspect ratios (height / width).")
    rpn_pre_nms_top_n_train: int = _key(2000, "Proposals per level kept before NMS in training.")
    rpn_post_nms_top_n_train: int = _key(2000, "Proposals per image kept after NMS in training.")
    rpn_pre_nms_top_n_test: int = _key(1000, "Proposals per level kept before NMS at inference.")
    rpn_post_nms_top_n_test: int = _key(1000, "Proposals per image kept after NMS at inference.")
    rpn_batch_size_per_image: int = _key(256, "Anchors sampled per image for the RPN loss.")
    box_representation_size: int = _key(1024, "Width of the box head's two fully connected layers.")
    box_batch_size_per_image: int = _key(512, "Proposals sampled per image for the box head loss.")
    box_score_thresh: float = _key(0.05, "Detections below this score are dropped at inference.")
    box_agnostic_nms_thresh: float = _key(0.0,
        "Class-agnostic NMS IoU after the per-class one: one detection per place, the most confident SKU "
        "(look-alikes are otherwise counted twice); 0: off, as torchvision.")
    box_agnostic_nms_decay: float = _key(0.0,
        "Detections that class-agnostic NMS suppresses are dropped (0) or kept with their score times "
        "this (e.g. 0.01: below counting thresholds, still second hypotheses for mAP).")
    box_detections_per_img: int = _key(100, "Most detections kept per image.")
    test_flips: str = _key("",
        "Test-time views fused with the plain one at inference: comma-separated among h, v, hv (hv: the "
        "image turned 180 degrees; each view costs one more forward); empty: none.")
    test_flip_iou: float = _key(0.5,
        "IoU at which detections of the test-time views are grouped as one object "
        "(dpsnet.detection.fuse_views).")
    ignore_ioa: float = _key(0.5,
        "An anchor/proposal this much inside an ignore region (iscrowd=1) is not background.")
    roi_pool: str = _key("auto",
        "Box RoI pooler: auto (aco_kernels where its kernel path runs, e.g. CUDA; elsewhere the gather, "
        "or torchvision's compiled RoIAlign for an adaptive sampling ratio), aco, torchvision or gather "
        "(one gather over the pyramid, whose backward is about 5x faster than torchvision's on CPU).",
        ("auto", "aco", "torchvision", "gather"))
    roi_sampling_ratio: int = _key(2,
        "RoIAlign samples per bin side for the box head (torchvision's 2; 1 makes a CPU step faster).")
    count_levels: Sequence[str] = _key(["1", "2", "3"],
        "Pyramid levels fused by the counting view at model.count_stride (\"0\"-\"3\" = P2-P5, \"pool\" = P6; "
        "the released DPSNet fuses P2-P6 at stride 8).")
    count_stride: int = _key(8, "Stride of the fused map and of the density maps, in image pixels.")
    count_channels: int = _key(64, "Width of the counting head.")
    count_convs: int = _key(2, "3x3 convolutions in the counting head.")
    count_feature_grad: float = _key(1.0,
        "Scale of the counting view's gradient into the shared pyramid and backbone (1: all of it, 0: "
        "none; its own layers always learn at the full loss), so that the count losses can be weighted up"
        " without taking the pyramid over from the detector.")
    density_scale: float = _key(100.0, "The counting head predicts densities times this factor.")
    sigma_scale: float = _key(0.15,
        "Density Gaussian sigma = sigma_scale * the box side of model.sigma_rule (aco_kernels' rule), at "
        "least 1 map pixel.")
    sigma_rule: str = _key("area",
        "Box side that sets the density Gaussian's sigma: area (sqrt(w * h)) or short_side (min(w, h): "
        "the released DPSNet's rule, with model.sigma_scale = 5/24).", ("area", "short_side"))
    density_loss_weight: float = _key(1.0, "Weight of the per-pixel density loss.")
    count_loss_weight: float = _key(1.0, "Weight of the count loss on the density integrals.")


@dataclass(frozen=True)
class DataSection:
    """``[data]``: training and validation sets, sampling and augmentation."""

    train_instances: Sequence[str] = _key([""], "Training instances JSON files (one or several, mixed).")
    train_images: Sequence[str] = _key([""], "Image folder of each training JSON, in the same order.")
    train_ratios: Sequence[float] = _key([0.0],
        "Sampling ratio of each training JSON; [0.0]: in proportion to their sizes.")
    val_instances: str = _key("", "Validation instances JSON for periodic evaluation; empty: none.")
    val_images: str = _key("", "Image folder of the validation JSON.")
    train_distill: Sequence[bool] = _key([True],
        "Per training JSON, whether soft distillation applies to its images (true for pseudo-labelled "
        "sets); one value: all of them.")
    epoch_size: int = _key(0, "Samples per epoch over all datasets; 0: the sum of their sizes.")
    hflip: float = _key(0.5, "Probability of a horizontal flip.")
    vflip: float = _key(0.5, "Probability of a vertical flip (checkout images are seen from above).")
    scale_min: float = _key(1.0,
        "Scale jitter: smallest resize factor applied before the model's own resizing.")
    scale_max: float = _key(1.0, "Scale jitter: largest resize factor.")
    brightness: float = _key(0.0, "Colour jitter: brightness factor range 1 +- this.")
    contrast: float = _key(0.0, "Colour jitter: contrast factor range 1 +- this.")
    saturation: float = _key(0.0, "Colour jitter: saturation factor range 1 +- this.")
    min_box_size: float = _key(1.0, "Boxes narrower or lower than this (px, after augmentation) are dropped.")
    num_workers: int = _key(0, "DataLoader worker processes per training process.")


@dataclass(frozen=True)
class TrainSection:
    """``[train]``: optimisation, precision, logging, checkpoints and evaluation."""

    seed: int = _key(0, "Random seed (weights, sampling, augmentation).")
    device: str = _key("auto",
        "auto (CUDA when available), cpu or cuda[:N]; under torchrun each rank uses its local GPU.")
    distill_weight: float = _key(0.0,
        "Weight of soft distillation (the box classifier matches a teacher's class distributions through "
        "aco_kernels.kd_loss); 0: off.")
    distill_checkpoint: str = _key("", "The teacher of soft distillation; empty: train.init_checkpoint.")
    distill_temperature: float = _key(2.0, "Softmax temperature of soft distillation.")
    trainable: str = _key("all",
        "What trains: all, or counting (the counting view alone on the frozen rest of the model, e.g. a "
        "short refinement of the counter from train.init_checkpoint: each step costs about a third of a "
        "full one).", ("all", "counting"))
    init_checkpoint: str = _key("",
        "A DPSNet checkpoint whose model weights start the run (a student from its teacher); empty: none.")
    threads: int = _key(0,
        "CPU threads per process (torch.set_num_threads); 0: torch's default. 1 is fastest on a shared, "
        "busy CPU.")
    batch_size: int = _key(2, "Images per step per process.")
    reference_batch: int = _key(0,
        "When > 0: train.lr, train.max_steps, train.lr_steps and train.warmup_steps are given for this "
        "total batch (images per step over all processes), and the run scales them to its own total "
        "(train.batch_size x processes) by the linear rule, lr x total / reference, steps x reference / "
        "total (logged at the start): the schedule per image does not depend on the number of GPUs. 0: "
        "used as given.")
    max_steps: int = _key(1000, "Optimiser steps of the whole run.")
    time_limit_min: float = _key(0.0, "Stop (and save) after this many minutes of training; 0: no limit.")
    optimizer: str = _key("sgd", "sgd or adamw.", ("sgd", "adamw"))
    lr: float = _key(0.02, "Peak learning rate.")
    momentum: float = _key(0.9, "SGD momentum (AdamW: beta1).")
    weight_decay: float = _key(0.0001, "Weight decay.")
    schedule: str = _key("step",
        "Learning-rate schedule after warmup: step, cosine or constant (the peak lr throughout, e.g. one "
        "round of a longer schedule).", ("step", "cosine", "constant"))
    warmup_steps: int = _key(500, "Linear warmup steps.")
    warmup_factor: float = _key(0.001, "Learning-rate factor at the first warmup step.")
    lr_steps: Sequence[int] = _key([0],
        "Step schedule: steps where the lr is multiplied by lr_gamma; [0]: at 2/3 and 8/9 of max_steps.")
    lr_gamma: float = _key(0.1, "Step schedule: the factor.")
    clip_grad_norm: float = _key(0.0, "Clip the gradient norm to this; 0: no clipping.")
    amp: bool = _key(True,
        "Mixed precision (bfloat16 autocast, boxes decoded in float32) where the device computes bfloat16"
        " natively: CUDA GPUs, and CPUs with AMX units (Intel Xeon 4th generation and newer: about 1.3x "
        "faster steps) or AVX512-BF16 (AMD Zen 4 and newer: about 1.4x); ignored elsewhere.")
    log_every: int = _key(20, "Steps between log lines (log.txt and log.jsonl).")
    checkpoint_every: int = _key(500,
        "Steps between checkpoints (last.pt); one is always written at the end.")
    eval_every: int = _key(0,
        "Steps between validation evaluations; 0: only at the end (when a val set is given).")
    eval_metric: str = _key("map50",
        "Validation metric choosing best.pt: map50, cacc (oracle threshold) or count_acc (counting view).",
        ("map50", "cacc", "count_acc"))
    eval_batch_size: int = _key(4, "Images per batch at evaluation.")


class Sections(NamedTuple):
    """A config as typed sections."""

    model: ModelSection
    data: DataSection
    train: TrainSection


SECTIONS = {"model": ModelSection, "data": DataSection, "train": TrainSection}


def _default(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


# (key, default, help), in the order `dpsnet config` prints them.
SCHEMA: list[tuple[str, Any, str]] = [(f"{name}.{f.name}", _default(f), f.metadata["help"])
                                      for name, cls in SECTIONS.items() for f in fields(cls)]
DEFAULTS: dict[str, Any] = {key: default for key, default, _ in SCHEMA}
HELP: dict[str, str] = {key: text for key, _, text in SCHEMA}
CHOICES: dict[str, tuple[str, ...]] = {f"{name}.{f.name}": f.metadata["choices"] for name, cls in SECTIONS.items()
                                       for f in fields(cls) if f.metadata["choices"]}
# Options measured and not kept: the value that stayed (now built in) and the measurement that retired them
# (docs/notes_dpsnet_results.md). Saved configs and checkpoints that hold the kept value still load.
RETIRED: dict[str, tuple[Any, str]] = {
    "data.camera": (0.0, "camera effects on half of the detector's training images: checkout test transfer cAcc "
                         "11.67% against 13.33% without"),
    "model.count_head": ("direct", "the factorized counting head counted no better: 2% of held-out synthesized "
                                   "images right per SKU against 7%, 12% in total against 25%"),
    "model.count_norm": ("batch", "the counting head without batch norm: its ReLUs died, a one-class counter said "
                                  "11.35 objects for every image"),
    "model.class_loss_weight": (1.0, "the class loss of the factorized counting head, retired with it"),
}
