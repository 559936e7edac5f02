"""DDP plumbing: the same command runs alone or under ``torchrun`` (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank, world size and local rank from an initialised process group (or ``torchrun``'s environment)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); a no-op otherwise."""
    info = dist_info()
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return dist_info()


def shutdown_distributed() -> None:
    """Leave the process group (after a last barrier). Exiting without it can abort a gloo rank at exit
    ("terminate called without an active exception") while its background threads still run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def gather_lists(items: list, info: DistInfo) -> list:
    """Concatenate every rank's list on all ranks (rank order); the list itself when not distributed."""
    if not (info.distributed and dist.is_initialized()):
        return items
    gathered: list[list] = [[] for _ in range(info.world_size)]
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a time limit reached on rank 0)."""
    if not (info.distributed and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
