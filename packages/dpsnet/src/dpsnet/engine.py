"""Training: optimiser and schedule, the step loop, logs, checkpoints, periodic evaluation, DDP."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from rpc_metrics import evaluate
from rpc_metrics.io import atomic_output, read_instances

from .config import model_kwargs, scale_to_batch
from .data import Augment, CategoryMap, InstancesDataset, MixedDataset, MixSampler, collate
from .distill import SoftDistiller
from .distributed import DistInfo, any_rank, barrier, gather_lists, init_distributed
from .inference import count_accuracy, native_bf16, predict, resolve_device
from .model import DPSNet, dpsnet_model

# --------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, *, max_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.001,
              schedule: str = "step", lr_steps: tuple[int, ...] = (), gamma: float = 0.1) -> float:
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


def build_optimizer(model: nn.Module, config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the trainable parameters; no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config["train.weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    name = config["train.optimizer"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config["train.lr"], momentum=config["train.momentum"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=config["train.lr"], betas=(config["train.momentum"], 0.999))
    raise ValueError(f"train.optimizer should be 'sgd' or 'adamw', got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, config: Mapping[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    max_steps = config["train.max_steps"]
    lr_steps = tuple(s for s in config["train.lr_steps"] if s > 0) or (round(max_steps * 2 / 3), round(max_steps * 8 / 9))
    kw = {"max_steps": max_steps, "warmup_steps": config["train.warmup_steps"],
          "warmup_factor": config["train.warmup_factor"], "schedule": config["train.schedule"],
          "lr_steps": lr_steps, "gamma": config["train.lr_gamma"]}
    lr_factor(0, **kw)  # validates the schedule name now rather than at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **kw))


# --------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, renamed on success (never a half-written file)."""
    with atomic_output(path) as tmp:
        torch.save(dict(state), tmp)
    return Path(path)


class RunLog:
    """Rank-0 logs: one text line per event in ``log.txt`` (and stdout), one JSON object in ``log.jsonl``."""

    def __init__(self, out_dir: Path, enabled: bool, echo: bool = True):
        self.enabled, self.echo = enabled, echo
        self.text_path, self.json_path = out_dir / "log.txt", out_dir / "log.jsonl"

    def write(self, record: dict, line: str) -> None:
        if not self.enabled:
            return
        with open(self.json_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.text_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.echo:
            print(line, flush=True)


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------- data


def train_datasets(config: Mapping[str, Any]) -> tuple[list[InstancesDataset], CategoryMap]:
    """The training datasets of the config and the category map (from the first JSON's categories)."""
    paths = [p for p in config["data.train_instances"] if p]
    folders = [p for p in config["data.train_images"] if p]
    if not paths:
        raise ValueError("data.train_instances is empty; give at least one training instances JSON")
    if len(folders) != len(paths):
        raise ValueError(f"data.train_images should name one image folder per training JSON ({len(paths)}), "
                         f"got {len(folders)}")
    first = read_instances(paths[0])
    categories = CategoryMap.from_categories(first["categories"], config["model.count_classes"])
    augment = Augment(hflip=config["data.hflip"], vflip=config["data.vflip"],
                      scale=(config["data.scale_min"], config["data.scale_max"]),
                      brightness=config["data.brightness"], contrast=config["data.contrast"],
                      saturation=config["data.saturation"], camera=config["data.camera"])
    datasets = []
    for path, folder in zip(paths, folders, strict=True):
        ds = InstancesDataset(first if path == paths[0] else path, folder, categories, augment=augment,
                              min_box_size=config["data.min_box_size"])
        ds.source = path
        datasets.append(ds)
    return datasets, categories


def soft_distiller(config: Mapping[str, Any], categories: CategoryMap, num_datasets: int,
                   device: torch.device) -> tuple[SoftDistiller | None, set[int]]:
    """The config's :class:`SoftDistiller` (``train.distill_weight > 0``, else None) and the indices of the
    training datasets whose images it applies to."""
    if config["train.distill_weight"] <= 0:
        return None, set()
    flags = config["data.train_distill"]
    if len(flags) not in (1, num_datasets):
        raise ValueError(f"data.train_distill should hold one true/false per training JSON ({num_datasets}), "
                         f"or one for all, got {len(flags)}")
    teacher = config["train.distill_checkpoint"] or config["train.init_checkpoint"]
    if not teacher:
        raise ValueError("train.distill_weight > 0 needs a teacher: set train.distill_checkpoint "
                         "(or train.init_checkpoint)")
    distiller = SoftDistiller(teacher, categories, weight=config["train.distill_weight"],
                              temperature=config["train.distill_temperature"], device=device)
    return distiller, {i for i in range(num_datasets) if (flags[0] if len(flags) == 1 else flags[i])}


class _Keys:
    """A map-style view of ``dataset`` at the given keys (one epoch's samples for this rank)."""

    def __init__(self, dataset, keys):
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        return self.dataset[self.keys[i]]


def _to_device(images, targets, device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets


# --------------------------------------------------------------------------------------------- evaluation


def validate(model: DPSNet, config: Mapping[str, Any], categories: CategoryMap, device: torch.device,
             info: DistInfo) -> dict[str, float]:
    """Predict the val set (sharded over ranks) and score it: mAP50, cAcc (oracle threshold), count accuracy."""
    dataset = InstancesDataset(config["data.val_instances"], config["data.val_images"], categories)
    shard = list(range(info.rank, len(dataset), info.world_size))
    results, count_images = predict(model, dataset, categories, batch_size=config["train.eval_batch_size"],
                                    device=device, indices=shard, amp=config["train.amp"])
    results, count_images = gather_lists(results, info), gather_lists(count_images, info)
    counts = {"count_classes": categories.count_classes, "images": count_images}
    report = evaluate(results, dataset.dataset, protocol="oracle", compute_map=True, levels=["averaged"])
    row = report.row("averaged")
    return {"map50": float(row.map50 or 0.0), "cacc": float(row.cacc), "acd": float(row.acd),
            "count_acc": count_accuracy(counts, dataset.dataset)}


# --------------------------------------------------------------------------------------------- training


def init_weights(model: nn.Module, checkpoint: str | Path, categories: CategoryMap, *,
                 counting_may_differ: bool = False) -> bool:
    """Start ``model`` from a DPSNet checkpoint's weights (same categories and architecture required).

    With ``counting_may_differ`` (a counting-only run), a counting view of another shape in the checkpoint
    (e.g. ``model.count_convs`` changed) is not an error: the rest loads and the view starts fresh. Returns
    whether the counting view was loaded from the checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_checkpoint: checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    saved = ckpt.get("categories", {})
    if (saved.get("category_ids"), saved.get("count_classes")) != (categories.category_ids, categories.count_classes):
        raise ValueError(f"train.init_checkpoint {path}: its categories differ from the training data's; "
                         "start from a checkpoint trained on the same category list")
    state = ckpt["model"]
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


def train(config: Mapping[str, Any], out_dir: str | Path, *, resume: bool = False, echo: bool = True) -> dict:
    """Train DPSNet as ``config`` says, writing ``last.pt``, ``best.pt`` (with a val set), ``log.txt`` and
    ``log.jsonl`` into ``out_dir``. Under ``torchrun`` every rank runs this; rank 0 does the I/O.

    Returns a summary: ``steps``, ``seconds``, ``last`` (checkpoint path), ``best`` and ``eval`` (last metrics).
    """
    config = dict(config)
    out_dir = Path(out_dir)
    device = resolve_device(config["train.device"])
    info = init_distributed(device)
    if info.distributed and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config["train.seed"])
    if config["train.threads"] > 0:
        torch.set_num_threads(config["train.threads"])

    # The schedule for this run's total batch (train.reference_batch); ``config`` stays as given (saved, resumed).
    scaled = scale_to_batch(config, info.world_size)
    schedule = {**config, **scaled}
    datasets, categories = train_datasets(config)
    kwargs = model_kwargs(config)
    model = dpsnet_model(categories.num_classes, categories.count_class_of_label,
                         num_count_classes=len(categories.count_names), **kwargs).to(device)
    trainable = config["train.trainable"]
    if trainable not in ("all", "counting"):
        raise ValueError(f"train.trainable should be 'all' or 'counting', got {trainable!r}")
    if trainable == "counting":
        if config["train.distill_weight"] > 0:
            raise ValueError("train.trainable='counting' trains the counting view alone; soft distillation "
                             "(train.distill_weight > 0) needs the box head: set one of them back")
        model.train_counting_only()
    optimizer = build_optimizer(model, schedule)
    scheduler = build_scheduler(optimizer, schedule)
    ratios = [r for r in config["data.train_ratios"] if r > 0] or None
    sampler = MixSampler([len(d) for d in datasets], ratios, seed=config["train.seed"],
                         epoch_size=config["data.epoch_size"] or None, rank=info.rank, world_size=info.world_size)
    mixed = MixedDataset(datasets)
    if len(sampler) < config["train.batch_size"]:
        raise ValueError(f"an epoch holds {len(sampler)} samples per process, fewer than train.batch_size="
                         f"{config['train.batch_size']}; raise data.epoch_size or lower the batch size")

    distiller, distill_sets = soft_distiller(config, categories, len(datasets), device)
    if distiller is not None:
        distiller.attach(model)

    step, epoch, position, best = 0, 0, 0, -math.inf
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    fresh_view = False
    if config["train.init_checkpoint"] and not resume:
        fresh_view = not init_weights(model, config["train.init_checkpoint"], categories,
                                      counting_may_differ=trainable == "counting")
    if resume:
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True) if last_path.is_file() else None
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last_path}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaled and len(ckpt["rng"]) != info.world_size:
            raise ValueError(f"--resume: {last_path} was trained by {len(ckpt['rng'])} process(es) and this run has "
                             f"{info.world_size}; with train.reference_batch the schedule depends on the total batch: "
                             "resume with the same number of processes")
        step, epoch, position, best = ckpt["step"], ckpt["epoch"], ckpt["position"], ckpt["best"]
        torch.set_rng_state(ckpt["rng"][info.rank % len(ckpt["rng"])])

    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.distributed else model
    log = RunLog(out_dir, info.is_main, echo)
    amp = config["train.amp"] and native_bf16(device)
    batch_size = config["train.batch_size"]
    max_steps = schedule["train.max_steps"]
    limit_s = config["train.time_limit_min"] * 60
    has_val = bool(config["data.val_instances"])
    metric_name = config["train.eval_metric"]
    if metric_name not in ("map50", "cacc", "count_acc"):
        raise ValueError(f"train.eval_metric should be map50, cacc or count_acc, got {metric_name!r}")

    def checkpoint_state() -> dict:
        rngs = gather_lists([torch.get_rng_state()], info)
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch, "position": position,
                "best": best, "rng": rngs, "model_kwargs": kwargs, "categories": categories.to_dict(),
                "config": config}

    def run_eval() -> dict[str, float]:
        nonlocal best
        metrics = validate(model, config, categories, device, info)
        record = {"type": "eval", "step": step, **metrics}
        log.write(record, f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        state = checkpoint_state()
        if metrics[metric_name] > best:
            best = metrics[metric_name]
            state["best"] = best
            if info.is_main:
                save_checkpoint(state, best_path)
        return metrics

    if scaled:
        log.write({"type": "batch_scaling", "reference_batch": config["train.reference_batch"],
                   "total_batch": batch_size * info.world_size, **scaled},
                  f"schedule for a total batch of {batch_size * info.world_size} ({batch_size} x {info.world_size} "
                  f"process(es)), given for {config['train.reference_batch']} (linear rule): lr {config['train.lr']:g} "
                  f"-> {scaled['train.lr']:g}, steps {config['train.max_steps']} -> {scaled['train.max_steps']}, "
                  f"lr drops {config['train.lr_steps']} -> {scaled['train.lr_steps']}, warmup "
                  f"{config['train.warmup_steps']} -> {scaled['train.warmup_steps']}")
    log.write({"type": "start", "step": step, "device": str(device), "world_size": info.world_size,
               "precision": "bfloat16 autocast" if amp else "float32", "trainable": trainable,
               "new_counting_view": fresh_view},
              f"training on {device} x {info.world_size}, {'bfloat16 autocast' if amp else 'float32'}, "
              f"from step {step}"
              + (", the counting view alone" if trainable == "counting" else "")
              + (" (a new one: the checkpoint's has another shape)" if fresh_view else ""))
    started = time.monotonic()
    window_start, window_steps, window_losses = started, 0, {}
    metrics: dict[str, float] = {}
    model.train()
    stop = step >= max_steps
    while not stop:
        sampler.set_epoch(epoch)
        keys = list(iter(sampler))
        loader = DataLoader(_Keys(mixed, keys[position * batch_size:]), batch_size=batch_size, shuffle=False,
                            collate_fn=collate, num_workers=config["data.num_workers"], drop_last=True,
                            generator=torch.Generator().manual_seed(epoch))  # keeps the global RNG untouched
        for images, targets in loader:
            images, targets = _to_device(images, targets, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                losses = net(images, targets)
                if distiller is not None:
                    losses["loss_distill"] = distiller.loss(model, [t["dataset"] in distill_sets for t in targets])
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}: "
                                         + ", ".join(f"{k} {float(v):.4g}" for k, v in losses.items()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config["train.clip_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["train.clip_grad_norm"])
            optimizer.step()
            scheduler.step()
            step, position = step + 1, position + 1
            window_steps += 1
            for k, v in losses.items():
                window_losses[k] = window_losses.get(k, 0.0) + float(v.detach())
            if step % config["train.log_every"] == 0 or step == max_steps:
                now = time.monotonic()
                per_step = (now - window_start) / window_steps
                avg = {k: v / window_steps for k, v in window_losses.items()}
                record = {"type": "train", "step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                          "loss": sum(avg.values()), **avg,
                          "images_per_s": batch_size * info.world_size / per_step,
                          "eta_s": per_step * (max_steps - step), "elapsed_s": now - started}
                log.write(record, f"step {step}/{max_steps} epoch {epoch} lr {record['lr']:.5f} "
                                  f"loss {record['loss']:.4f} ("
                          + ", ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in avg.items())
                          + f") {record['images_per_s']:.1f} img/s eta {format_seconds(record['eta_s'])}")
                window_start, window_steps, window_losses = now, 0, {}
            out_of_time = limit_s > 0 and time.monotonic() - started >= limit_s
            stop = step >= max_steps or any_rank(out_of_time, info)
            if has_val and config["train.eval_every"] and step % config["train.eval_every"] == 0 and not stop:
                metrics = run_eval()
                model.train()
            if stop or step % config["train.checkpoint_every"] == 0:
                state = checkpoint_state()
                if info.is_main:
                    save_checkpoint(state, last_path)
                barrier(info)
            if stop:
                break
        else:
            epoch, position = epoch + 1, 0
    if has_val:
        metrics = run_eval()
        model.train()
        barrier(info)
    seconds = time.monotonic() - started
    log.write({"type": "done", "step": step, "seconds": seconds, "precision": "bfloat16 autocast" if amp else "float32"},
              f"done: {step} steps in {format_seconds(seconds)}")
    return {"steps": step, "seconds": seconds, "last": str(last_path),
            "best": str(best_path) if has_val else None, "eval": metrics}
