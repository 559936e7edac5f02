"""The crop classifier (the small body, global average pooling, a linear SKU layer) and the file that holds it.

``dpsnet pretrain`` writes one file: the body's weights under ``model`` (what ``model.backbone_weights`` loads),
the linear layer ``fc``, ``category_ids``, the body's ``channels`` and ``norm``, the crop ``size``, a ``summary``
and the pair specialists (``specialists``: each with its two ``classes`` and its own ``model`` and ``fc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .backbone import SmallBody, load_torch_file

PRETRAIN_HINT = "pass a file written by `dpsnet pretrain`"


class CropClassifier(nn.Module):
    """The small body, global average pooling and a linear SKU classifier; input 0-1 RGB Tensor[B, 3, S, S]."""

    def __init__(self, num_classes: int, channels: tuple[int, ...] = (32, 64, 128, 256), norm: str = "batch"):
        super().__init__()
        self.body = SmallBody(channels, norm)
        self.fc = nn.Linear(channels[-1], num_classes)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body.pooled_features((x - self.mean) / self.std))


@dataclass
class CropClassifierFile:
    """A ``dpsnet pretrain`` file read back: the classifier, its categories, its crop size and the specialists
    (``(classes, classifier)``: the generalist's class indices of the pair and the pair's two-class classifier)."""

    classifier: CropClassifier
    category_ids: list[int]
    size: int = 64
    specialists: list[tuple[list[int], CropClassifier]] = field(default_factory=list)

    def state(self, summary: dict) -> dict:
        """The file's content, with ``summary`` (what ``dpsnet pretrain`` measured)."""
        body = self.classifier.body
        return {"model": body.state_dict(), "fc": self.classifier.fc.state_dict(),
                "category_ids": list(self.category_ids), "channels": list(body.channels),
                "norm": body.norm, "size": self.size, "summary": summary,
                "specialists": [{"classes": [int(c) for c in classes], "model": m.body.state_dict(),
                                 "fc": m.fc.state_dict()} for classes, m in self.specialists]}


def _classifier(num_classes: int, state: dict, fc: dict, channels: Sequence[int], norm: str) -> CropClassifier:
    model = CropClassifier(num_classes, tuple(channels), norm)
    model.body.load_state_dict(state)
    model.fc.load_state_dict(fc)
    return model


def load_crop_classifier(path: str | Path) -> CropClassifierFile:
    """Read a ``dpsnet pretrain`` file; a missing file, or one without the linear layer (an older pretraining's
    body-only weights), raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reclassifier file not found: {path}")
    state = load_torch_file(path, "dpsnet pretrain file", PRETRAIN_HINT)
    return crop_classifier_from_state(state, str(path))


def crop_classifier_from_state(ckpt: dict, source: str = "reclassifier") -> CropClassifierFile:
    """A ``dpsnet pretrain`` file's content (already loaded, e.g. from a deployment bundle) read back."""
    if "fc" not in ckpt or "category_ids" not in ckpt:
        raise ValueError(f"{source}: no classifier layer in this file (written by an older `dpsnet pretrain`, or "
                         "not by it); run `dpsnet pretrain` again to get a file that can re-classify")
    try:
        channels, norm = ckpt["channels"], ckpt.get("norm", "batch")
        classifier = _classifier(len(ckpt["category_ids"]), ckpt["model"], ckpt["fc"], channels, norm)
        specialists = [(list(spec["classes"]), _classifier(len(spec["classes"]), spec["model"], spec["fc"],
                                                           channels, norm)) for spec in ckpt.get("specialists", [])]
        return CropClassifierFile(classifier, [int(c) for c in ckpt["category_ids"]], int(ckpt.get("size", 64)),
                                  specialists)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        reason = (str(err).strip().splitlines() or [""])[0][:100]
        raise ValueError(f"{source}: not a readable dpsnet pretrain file ({type(err).__name__}: {reason}); "
                         f"{PRETRAIN_HINT}") from None
