"""Optimiser and learning-rate schedule: SGD or AdamW, linear warmup, then step drops, a half cosine or constant."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def lr_factor(step: int, *, max_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.001,
              schedule: str = "step", lr_steps: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warmup from ``warmup_factor`` to 1 over
    ``warmup_steps``, then ``gamma ** (number of lr_steps passed)`` (``step``), a half cosine to 0 (``cosine``)
    or 1 (``constant``)."""
    if schedule not in ("step", "cosine", "constant"):
        raise ValueError(f"schedule should be 'step', 'cosine' or 'constant', got {schedule!r}")
    warm = 1.0
    if step < warmup_steps:
        alpha = step / warmup_steps
        warm = warmup_factor * (1 - alpha) + alpha
    if schedule == "step":
        return warm * gamma ** sum(step >= s for s in lr_steps)
    if schedule == "constant":
        return warm
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, max_steps - warmup_steps)))
    return warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, *, name: str = "sgd", lr: float, momentum: float = 0.9,
                    weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW (``momentum`` as beta1) over the trainable parameters; no weight decay on biases
    and norm weights."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"train.optimizer should be 'sgd' or 'adamw', got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, *, max_steps: int, warmup_steps: int = 0,
                    warmup_factor: float = 0.001, schedule: str = "step", lr_steps: Sequence[int] = (),
                    gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` as a scheduler; ``lr_steps`` without a positive entry drop at 2/3 and 8/9 of
    ``max_steps``."""
    drops = tuple(s for s in lr_steps if s > 0) or (round(max_steps * 2 / 3), round(max_steps * 8 / 9))
    kw = {"max_steps": max_steps, "warmup_steps": warmup_steps, "warmup_factor": warmup_factor,
          "schedule": schedule, "lr_steps": drops, "gamma": gamma}
    lr_factor(0, **kw)  # validates the schedule name now rather than at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **kw))
