"""What a model must offer to be distilled by the loop: two methods, files in and files out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class TrainingSet:
    """One training dataset: an RPC/COCO instances JSON, its image folder, and its sampling weight.

    Annotations with ``iscrowd: 1`` are ignore regions: neither object nor background. ``teacher`` is the
    checkpoint whose predictions made the labels (pseudo-labelled sets; None for labelled data): a learner
    may distil from it on these images.
    """

    instances: Path
    images: Path
    weight: float = 1.0
    teacher: Path | None = None


@dataclass(frozen=True)
class Prediction:
    """A learner's output on a pool: a COCO results JSON and, if the model counts, a counts file."""

    results: Path
    counts: Path | None = None


@runtime_checkable
class Learner(Protocol):
    """A trainable detector (and optionally counter), driven by files only.

    ``fit`` trains on ``datasets`` starting from ``init`` (a checkpoint path, or None for the learner's own
    initialisation), writes whatever it needs under ``out_dir`` and returns the checkpoint path. ``predict``
    runs ``checkpoint`` on the pool (an instances JSON whose annotations are empty) and the pool's image
    folder, writing a results file and optionally a counts file (formats of ``rpc_metrics.io``) under
    ``out_dir``. Both must be deterministic given ``seed`` for the loop's runs to be reproducible.
    """

    def fit(self, datasets: Sequence[TrainingSet], *, init: Path | None, out_dir: Path, seed: int) -> Path: ...

    def predict(self, checkpoint: Path, pool: Path, images: Path, *, out_dir: Path) -> Prediction: ...
