"""The one training loop: optimiser steps under the lr schedule, bfloat16 autocast, a guard against non-finite
losses, a progress record every few steps, a time limit, and a hook after each step (evaluation, checkpoints).

Detector training, backbone pretraining and the pair specialists all run through :func:`run_loop`; they differ in
their batches, their losses and what they do after a step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .records import RunLog


@dataclass
class LoopOptions:
    """How :func:`run_loop` runs.

    Args:
        max_steps: the step at which the run ends. autocast: the device type under which losses are computed in
            bfloat16 autocast, or None (float32). clip_grad_norm: gradient norm clipping (0: none).
        time_limit_s: stop after this many seconds (0: none). any_rank: turns this process's "out of time" into
            every process's (DDP); the identity alone.
        log: where the log steps go (None: nowhere). log_every: steps between log records. label, unit: the
            progress line's name and the unit of ``items_per_step`` (images, crops per optimiser step).
        extra: values added to each log record (e.g. the epoch). hint: appended to the non-finite-loss error.
    """

    max_steps: int
    autocast: str | None = None
    clip_grad_norm: float = 0.0
    time_limit_s: float = 0.0
    any_rank: Callable[[bool], bool] = bool
    log: RunLog | None = None
    log_every: int = 20
    label: str = "train"
    unit: str = "img"
    items_per_step: int = 1
    extra: Callable[[], dict[str, Any]] = field(default=dict)
    hint: str = ""


class _Window:
    """Loss sums and time since the last log step."""

    def __init__(self, started: float):
        self.started, self.steps, self.sums = started, 0, {}

    def add(self, losses: dict[str, Tensor]) -> None:
        self.steps += 1
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())

    def record(self, step: int, lr: float, options: LoopOptions, run_started: float) -> dict[str, Any]:
        now = time.monotonic()
        per_step = (now - self.started) / self.steps
        avg = {k: v / self.steps for k, v in self.sums.items()}
        record = {"type": "train", "step": step, "max_steps": options.max_steps, **options.extra(), "lr": lr,
                  "loss": sum(avg.values()), **avg, "images_per_s": options.items_per_step / per_step,
                  "eta_s": per_step * (options.max_steps - step), "elapsed_s": now - run_started}
        self.started, self.steps, self.sums = now, 0, {}
        return record


def _check_finite(loss: Tensor, losses: dict[str, Tensor], step: int, options: LoopOptions) -> None:
    if not torch.isfinite(loss):
        terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())
        under = " under bfloat16 autocast" if options.autocast else ""
        raise FloatingPointError(f"{options.label} loss is {float(loss.detach()):.4g} at step {step + 1}{under} ({terms})"
                                 f"{options.hint}")


def run_loop(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
             batches: Iterable, losses_of: Callable[[Any], dict[str, Tensor]], options: LoopOptions, *,
             step: int = 0, after_step: Callable[[int, bool], None] | None = None) -> int:
    """Train ``model`` from ``step`` until ``options.max_steps`` (or the time limit, or the end of ``batches``):
    for each batch, ``losses_of(batch)`` (a dict of scalar losses, summed) under autocast, then backward, clipping,
    the optimiser and the scheduler; ``after_step(step, stop)`` after each (``stop``: the run ends there). The
    log records carry the step, the lr of the next step, each loss averaged since the last record, images/s and
    the time left. Returns the step reached."""
    started = time.monotonic()
    window = _Window(started)
    if step >= options.max_steps:
        return step
    for batch in batches:
        with torch.autocast(options.autocast or "cpu", dtype=torch.bfloat16, enabled=options.autocast is not None):
            losses = losses_of(batch)
        loss = sum(losses.values())
        _check_finite(loss, losses, step, options)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        window.add(losses)
        if options.log is not None and (step % options.log_every == 0 or step == options.max_steps):
            record = window.record(step, optimizer.param_groups[0]["lr"], options, started)
            options.log.step(record, options.label, options.unit)
        out_of_time = options.time_limit_s > 0 and time.monotonic() - started >= options.time_limit_s
        stop = step >= options.max_steps or options.any_rank(out_of_time)
        if after_step is not None:
            after_step(step, stop)
        if stop:
            break
    return step
