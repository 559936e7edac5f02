"""Detector training: DPSNet on a config's datasets through the one loop, with periodic evaluation, checkpoints
(``last.pt``, ``best.pt``), exact resume and DDP; :func:`train` is where a flat config becomes keyword arguments."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from rpc_metrics import evaluate
from rpc_metrics.counts import count_accuracy
from rpc_metrics.files import remove_stale_temporaries

from ..checkpoint import RESUME_KEYS, check_state, load_checkpoint, save_checkpoint
from ..config import Sections, describe, make_config, model_kwargs, scale_to_batch, sections
from ..data import CategoryMap, InstancesDataset, MixedDataset, MixSampler
from ..device import native_bf16, resolve_device
from ..distributed import DistInfo, any_rank, barrier, gather_lists, init_distributed
from ..inference.prediction import predict
from ..model import DPSNet, dpsnet_model
from ..progress import format_seconds
from .data import EpochBatches, soft_distiller, to_device, train_datasets
from .distill import SoftDistiller
from .loop import LoopOptions, run_loop
from .records import RunLog
from .schedule import build_optimizer, build_scheduler


@dataclass
class _Run:
    """One detector run: its settings, model, optimiser and where it stands."""

    config: dict
    cfg: Sections
    out_dir: Path
    device: torch.device
    info: DistInfo
    categories: CategoryMap
    model: DPSNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batches: EpochBatches
    scaled: dict
    distiller: SoftDistiller | None = None
    distill_sets: set[int] = field(default_factory=set)
    max_steps: int = 0
    step: int = 0
    best: float = -math.inf
    metrics: dict[str, float] = field(default_factory=dict)
    log: RunLog | None = None


def validate(model: DPSNet, cfg: Sections, categories: CategoryMap, device: torch.device,
             info: DistInfo) -> dict[str, float]:
    """Predict the val set (sharded over ranks) and score it: mAP50, cAcc (oracle threshold), count accuracy."""
    dataset = InstancesDataset(cfg.data.val_instances, cfg.data.val_images, categories)
    shard = list(range(info.rank, len(dataset), info.world_size))
    results, count_images = predict(model, dataset, categories, batch_size=cfg.train.eval_batch_size,
                                    device=device, indices=shard, amp=cfg.train.amp)
    results, count_images = gather_lists(results, info), gather_lists(count_images, info)
    counts = {"count_classes": categories.count_classes, "images": count_images}
    report = evaluate(results, dataset.dataset, protocol="oracle", compute_map=True, levels=["averaged"])
    row = report.row("averaged")
    return {"map50": float(row.map50 or 0.0), "cacc": float(row.cacc), "acd": float(row.acd),
            "count_acc": count_accuracy(counts, dataset.dataset)}


def init_weights(model: DPSNet, checkpoint: str | Path, categories: CategoryMap, *,
                 counting_may_differ: bool = False) -> bool:
    """Start ``model`` from a DPSNet checkpoint's weights (same categories and architecture required).

    With ``counting_may_differ`` (a counting-only run), a counting view of another shape in the checkpoint
    (e.g. ``model.count_convs`` changed) is not an error: the rest loads and the view starts fresh. Returns
    whether the counting view was loaded from the checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_checkpoint: checkpoint not found: {path}")
    try:
        ckpt = load_checkpoint(path)
    except ValueError as err:
        raise ValueError(f"train.init_checkpoint: {err}") from None
    saved = ckpt.get("categories", {})
    if (saved.get("category_ids"), saved.get("count_classes")) != (categories.category_ids, categories.count_classes):
        raise ValueError(f"train.init_checkpoint {path}: its categories differ from the training data's; "
                         "start from a checkpoint trained on the same category list")
    state = ckpt["model"]
    check_state(state, f"train.init_checkpoint {path}")
    if counting_may_differ:
        view = {k: v for k, v in model.state_dict().items() if k.startswith("counting_view.")}
        saved_view = {k: v for k, v in state.items() if k.startswith("counting_view.")}
        if set(view) != set(saved_view) or any(view[k].shape != saved_view[k].shape for k in view):
            state = {**{k: v for k, v in state.items() if not k.startswith("counting_view.")}, **view}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"train.init_checkpoint {path}: its model does not fit this config's model ({err}); "
                         "use the same model.* keys as the checkpoint") from None
    return state is ckpt["model"]


def _build(config: dict, cfg: Sections, out_dir: Path, device: torch.device, info: DistInfo) -> _Run:
    """The datasets, the model (built right after seeding: the seed fixes its weights), the optimiser and
    schedule for this run's total batch, the sampler and the soft distiller."""
    scaled = scale_to_batch(config, info.world_size)
    schedule = sections({**config, **scaled}).train
    datasets, categories = train_datasets(cfg.data, cfg.model.count_classes)
    model = dpsnet_model(categories.num_classes, categories.count_class_of_label,
                         num_count_classes=len(categories.count_names), **model_kwargs(config)).to(device)
    if cfg.train.trainable == "counting":
        if cfg.train.distill_weight > 0:
            raise ValueError("train.trainable='counting' trains the counting view alone; soft distillation "
                             "(train.distill_weight > 0) needs the box head: set one of them back")
        model.train_counting_only()
    t = cfg.train
    optimizer = build_optimizer(model, name=t.optimizer, lr=schedule.lr, momentum=t.momentum,
                                weight_decay=t.weight_decay)
    scheduler = build_scheduler(optimizer, max_steps=schedule.max_steps, warmup_steps=schedule.warmup_steps,
                                warmup_factor=t.warmup_factor, schedule=t.schedule, lr_steps=schedule.lr_steps,
                                gamma=t.lr_gamma)
    sampler = MixSampler([len(d) for d in datasets], [r for r in cfg.data.train_ratios if r > 0] or None,
                         seed=t.seed, epoch_size=cfg.data.epoch_size or None, rank=info.rank,
                         world_size=info.world_size)
    if len(sampler) < t.batch_size:
        raise ValueError(f"an epoch holds {len(sampler)} samples per process, fewer than train.batch_size="
                         f"{t.batch_size}; raise data.epoch_size or lower the batch size")
    batches = EpochBatches(sampler, MixedDataset(datasets), t.batch_size, cfg.data.num_workers)
    run = _Run(config, cfg, out_dir, device, info, categories, model, optimizer, scheduler, batches, scaled,
               max_steps=schedule.max_steps)
    run.distiller, run.distill_sets = soft_distiller(cfg, categories, len(datasets), device)
    return run


def _checkpoint_state(run: _Run) -> dict[str, Any]:
    rngs = gather_lists([torch.get_rng_state()], run.info)
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "step": run.step, "epoch": run.batches.epoch,
            "position": run.batches.position, "best": run.best, "rng": rngs, "model_kwargs": model_kwargs(run.config),
            "categories": run.categories.to_dict(), "config": run.config}


def _resume(run: _Run) -> None:
    """Continue from ``last.pt``: weights, optimiser, schedule, data position and RNG."""
    last = run.out_dir / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last}")
    ckpt = load_checkpoint(last, RESUME_KEYS)
    check_state(ckpt["model"], str(last))
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaled and len(ckpt["rng"]) != run.info.world_size:
        raise ValueError(f"--resume: {last} was trained by {len(ckpt['rng'])} process(es) and this run has "
                         f"{run.info.world_size}; with train.reference_batch the schedule depends on the total batch: "
                         "resume with the same number of processes")
    run.step, run.best = ckpt["step"], ckpt["best"]
    run.batches.epoch, run.batches.position = ckpt["epoch"], ckpt["position"]
    torch.set_rng_state(ckpt["rng"][run.info.rank % len(ckpt["rng"])])


def _evaluate(run: _Run) -> dict[str, float]:
    """Validate, log it, and keep ``best.pt`` when ``train.eval_metric`` improved."""
    metrics = validate(run.model, run.cfg, run.categories, run.device, run.info)
    run.log.write({"type": "eval", "step": run.step, **metrics},
                  f"eval step {run.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    state = _checkpoint_state(run)
    if metrics[run.cfg.train.eval_metric] > run.best:
        run.best = state["best"] = metrics[run.cfg.train.eval_metric]
        if run.info.is_main:
            save_checkpoint(state, run.out_dir / "best.pt")
    run.metrics = metrics
    run.model.train()
    return metrics


def _after_step(run: _Run, step: int, stop: bool) -> None:
    """Evaluate every ``train.eval_every`` steps (not at the last: the end evaluates), checkpoint every
    ``train.checkpoint_every`` steps and at the last."""
    run.step = step
    t = run.cfg.train
    if run.cfg.data.val_instances and t.eval_every and step % t.eval_every == 0 and not stop:
        _evaluate(run)
    if stop or step % t.checkpoint_every == 0:
        state = _checkpoint_state(run)
        if run.info.is_main:
            save_checkpoint(state, run.out_dir / "last.pt")
            run.log.draw()
        barrier(run.info)


def _log_start(run: _Run, amp: bool, fresh_view: bool) -> None:
    t, info, scaled = run.cfg.train, run.info, run.scaled
    total = t.batch_size * info.world_size
    if scaled:
        run.log.write({"type": "batch_scaling", "reference_batch": t.reference_batch, "total_batch": total, **scaled},
                      f"schedule for a total batch of {total} ({t.batch_size} x {info.world_size} process(es)), "
                      f"given for {t.reference_batch} (linear rule): lr {t.lr:g} -> {scaled['train.lr']:g}, steps "
                      f"{t.max_steps} -> {scaled['train.max_steps']}, lr drops {t.lr_steps} -> "
                      f"{scaled['train.lr_steps']}, warmup {t.warmup_steps} -> {scaled['train.warmup_steps']}")
    precision = "bfloat16 autocast" if amp else "float32"
    run.log.write({"type": "start", "step": run.step, "device": str(run.device), "world_size": info.world_size,
                   "precision": precision, "trainable": t.trainable, "new_counting_view": fresh_view},
                  f"training on {run.device} x {info.world_size}, {precision}, from step {run.step}"
                  + (", the counting view alone" if t.trainable == "counting" else "")
                  + (" (a new one: the checkpoint's has another shape)" if fresh_view else ""))


def train(config: Mapping[str, Any], out_dir: str | Path, *, resume: bool = False, echo: bool = True) -> dict:
    """Train DPSNet as ``config`` (a flat config, see :mod:`dpsnet.config`) says, writing ``config.toml`` (a fresh
    run), ``last.pt``, ``best.pt`` (with a val set), ``log.txt``, ``log.jsonl``, ``results.csv`` and ``results.png``
    into ``out_dir``, nothing before the data, checkpoints and config have loaded. Under ``torchrun`` every rank
    runs this; rank 0 does the I/O.

    Returns a summary: ``steps``, ``seconds``, ``last`` (checkpoint path), ``best`` and ``eval`` (last metrics).
    """
    config = make_config(config)
    cfg, out_dir = sections(config), Path(out_dir)
    device = resolve_device(cfg.train.device)
    info = init_distributed(device)
    if info.distributed and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    run = _build(config, cfg, out_dir, device, info)
    fresh_view = False
    if cfg.train.init_checkpoint and not resume:
        fresh_view = not init_weights(run.model, cfg.train.init_checkpoint, run.categories,
                                      counting_may_differ=cfg.train.trainable == "counting")
    if resume:
        _resume(run)
    if info.is_main:  # the inputs loaded: only now does the run write anything (a failed start leaves no trace)
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)  # a killed run's half-written checkpoint or curves (--resume)
        if not resume:
            (out_dir / "config.toml").write_text(describe(config), encoding="utf-8")
    net = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.distributed else run.model
    run.log = RunLog.in_folder(out_dir, enabled=info.is_main, echo=echo)
    amp = cfg.train.amp and native_bf16(device)
    _log_start(run, amp, fresh_view)

    def losses_of(batch) -> dict[str, torch.Tensor]:
        images, targets = to_device(*batch, device)
        if run.distiller is None:
            return net(images, targets)
        losses, box_head = net(images, targets, return_box_logits=True)
        losses["loss_distill"] = run.distiller.loss(box_head, [t["dataset"] in run.distill_sets for t in targets])
        return losses

    return _fit(run, losses_of, amp)


def _fit(run: _Run, losses_of, amp: bool) -> dict:
    """The loop over the run's batches, the final evaluation and the summary."""
    t, info = run.cfg.train, run.info
    options = LoopOptions(
        max_steps=run.max_steps, autocast=run.device.type if amp else None, clip_grad_norm=t.clip_grad_norm,
        time_limit_s=t.time_limit_min * 60, any_rank=lambda flag: any_rank(flag, info), log=run.log,
        log_every=t.log_every, label="train", unit="img", items_per_step=t.batch_size * info.world_size,
        extra=lambda: {"epoch": run.batches.epoch})
    started = time.monotonic()
    run.model.train()
    run.step = run_loop(run.model, run.optimizer, run.scheduler, run.batches, losses_of, options, step=run.step,
                        after_step=lambda step, stop: _after_step(run, step, stop))
    if run.cfg.data.val_instances:
        _evaluate(run)
        barrier(info)
    seconds = time.monotonic() - started
    run.log.write({"type": "done", "step": run.step, "seconds": seconds,
                   "precision": "bfloat16 autocast" if amp else "float32"},
                  f"done: {run.step} steps in {format_seconds(seconds)}")
    run.log.draw()
    return {"steps": run.step, "seconds": seconds, "last": str(run.out_dir / "last.pt"),
            "best": str(run.out_dir / "best.pt") if run.cfg.data.val_instances else None, "eval": run.metrics}
