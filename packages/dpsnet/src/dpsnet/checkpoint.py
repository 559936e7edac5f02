"""DPSNet checkpoint files: written atomically, loaded with ``weights_only=True``, turned back into a model.

A checkpoint is a dict: ``model`` (the state dict), ``model_kwargs`` (:func:`dpsnet.model.dpsnet_model`'s keyword
arguments), ``categories`` (:meth:`dpsnet.data.CategoryMap.to_dict`), ``config`` (the flat config it was trained
with) and, for resuming, ``optimizer``, ``scheduler``, ``step``, ``epoch``, ``position``, ``best`` and ``rng`` (one
RNG state per process). Keys of retired options (:data:`dpsnet.config.RETIRED`) load when they hold the value that
was kept, and raise a clear error otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rpc_metrics.io import atomic_output

from .backbone import load_torch_file
from .config import RETIRED
from .data import CategoryMap
from .model import DPSNet, dpsnet_model

# A counting head without batch norm (retired model.count_norm = "none") has biases on its 3x3 convolutions.
_PLAIN_HEAD_KEY = "counting_view.convs.0.bias"


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, renamed on success (never a half-written file)."""
    # Through a Python file: a failed write (a full disk) is an OSError naming the file, not torch's RuntimeError.
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(dict(state), f)
    return Path(path)


CHECKPOINT_KEYS = ("model", "model_kwargs", "categories")
RESUME_KEYS = (*CHECKPOINT_KEYS, "optimizer", "scheduler", "step", "epoch", "position", "best", "rng")
CHECKPOINT_HINT = "pass a checkpoint written by `dpsnet train` (its run folder's last.pt or best.pt)"


def load_checkpoint(path: str | Path, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """A checkpoint dict, loaded with ``weights_only=True``; a missing file raises FileNotFoundError naming it, and
    a file that does not load (truncated, foreign) or lacks one of ``keys`` a one-line ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = load_torch_file(path, "dpsnet checkpoint", CHECKPOINT_HINT)
    missing = [key for key in keys if key not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a readable dpsnet checkpoint (no {missing[0]!r}); {CHECKPOINT_HINT}")
    if not all(isinstance(ckpt[key], Mapping) for key in CHECKPOINT_KEYS if key in keys):
        raise ValueError(f"{path}: not a readable dpsnet checkpoint (a malformed entry); {CHECKPOINT_HINT}")
    _categories(ckpt, str(path))
    return ckpt


def _categories(ckpt: Mapping[str, Any], source: str) -> CategoryMap:
    try:
        return CategoryMap(**ckpt["categories"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: not a readable dpsnet checkpoint (its categories: {err}); {CHECKPOINT_HINT}") \
            from None


def _retired_error(source: str, key: str, value: Any) -> ValueError:
    kept, why = RETIRED[key]
    return ValueError(f"{source}: trained with {key} = {value!r}, an option that was retired ({why}); only "
                      f"{kept!r} is built in now, so this checkpoint needs the dpsnet that wrote it")


def check_state(state: Mapping[str, Any], source: str) -> None:
    """Raise naming the retired option when ``state`` is that of a plain counting head (no batch norm)."""
    if _PLAIN_HEAD_KEY in state:
        raise _retired_error(source, "model.count_norm", "none")


def current_model_kwargs(saved: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's ``model_kwargs`` without the retired options' keys (which must hold the kept value)."""
    kwargs = dict(saved)
    for key, (kept, _) in RETIRED.items():
        name = key.removeprefix("model.")
        if key.startswith("model.") and name in kwargs:
            value = kwargs.pop(name)
            if value != kept:
                raise _retired_error(source, key, value)
    return kwargs


def load_model_state(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """``model.load_state_dict(state)``; a retired head or another architecture raises a ValueError naming
    ``source``."""
    check_state(state, source)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{source}: its model does not fit this one ({err})") from None


def model_from_checkpoint(checkpoint: Mapping | str | Path, device: str | torch.device = "cpu",
                          **overrides) -> tuple[DPSNet, CategoryMap]:
    """Rebuild the model a checkpoint was trained as (its ``model_kwargs``, ``overrides`` on top), in eval mode."""
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "checkpoint"
    ckpt = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    categories = _categories(ckpt, source)
    check_state(ckpt["model"], source)
    kwargs = {**current_model_kwargs(ckpt["model_kwargs"], source), "backbone_weights": None, **overrides}
    model = dpsnet_model(categories.num_classes, categories.count_class_of_label,
                         num_count_classes=len(categories.count_names), **kwargs)
    load_model_state(model, ckpt["model"], source)
    return model.to(device).eval(), categories
