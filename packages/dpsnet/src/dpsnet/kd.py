"""DPSNet as a kd-loop learner: ``learner.path = "dpsnet.kd:Learner"`` in a kd-loop config.

``fit`` trains with :func:`dpsnet.training.train` on the round's dataset mix (ignore regions included),
starting from the teacher's weights when kd-loop passes ``init``; ``predict`` writes the COCO results and the
counts file of a pool with :func:`dpsnet.inference.predict_files`. Files in, files out: kd-loop never
imports dpsnet, and dpsnet does not import kd-loop (the returned prediction only needs ``results`` and
``counts`` attributes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpc_metrics.io import load_json

from .config import make_config
from .config.ranges import device_problem
from .inference import predict_files
from .training import train


@dataclass(frozen=True)
class PoolPrediction:
    """Where a prediction was written (the shape of ``kd_loop.Prediction``)."""

    results: Path
    counts: Path


class Learner:
    """Train and predict DPSNet for kd-loop.

    Args:
        preset: a dpsnet preset name or TOML file (``cpu-small`` on a CPU, ``rpc-paper`` on GPUs).
        overrides: config keys on top of the preset (``{"train.max_steps": 300}``); the data keys, the seed
            and the init checkpoint are set by the loop.
        batch_size: images per batch at prediction.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        soft_distillation: on the pseudo-labelled sets (those with a ``teacher``), the student's box classifier
            also matches the teacher's class distributions (``aco_kernels.kd_loss``, see :mod:`dpsnet.training.distill`)
            with weight ``distill_weight`` at ``distill_temperature``.
        reclassifier: a ``dpsnet pretrain`` file whose crop classifier re-scores the teacher's detections when it
            predicts the pool (:class:`dpsnet.inference.CropRescorer`, ``reclassifier_power``); None: off.
    """

    def __init__(self, preset: str = "cpu-small", overrides: Mapping[str, Any] | None = None, *,
                 batch_size: int = 4, device: str = "auto", echo: bool = False, soft_distillation: bool = False,
                 distill_weight: float = 1.0, distill_temperature: float = 2.0, reclassifier: str | None = None,
                 reclassifier_power: float = 0.5):
        self.preset = preset
        self.overrides = dict(overrides or {})
        if soft_distillation and (distill_weight <= 0 or distill_temperature <= 0):
            raise ValueError(f"distill_weight and distill_temperature should be > 0, got {distill_weight} and "
                             f"{distill_temperature}")
        self.soft_distillation = soft_distillation
        self.distill_weight, self.distill_temperature = float(distill_weight), float(distill_temperature)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size should be a positive integer, got {batch_size!r}")
        if problem := device_problem(device):
            raise ValueError(f"device: {problem}")
        self.batch_size = batch_size
        self.device = device
        self.echo = echo
        if reclassifier is not None and not Path(reclassifier).is_file():
            raise FileNotFoundError(f"reclassifier file not found: {reclassifier}")
        if reclassifier_power < 0:
            raise ValueError(f"reclassifier_power should be >= 0, got {reclassifier_power}")
        self.reclassifier, self.reclassifier_power = reclassifier, float(reclassifier_power)
        make_config(preset, self.overrides)  # fail at construction on a bad key or value

    def fit(self, datasets: Sequence[Any], *, init: Path | None, out_dir: Path, seed: int) -> Path:
        """Train on ``datasets`` (objects with ``instances``, ``images``, ``weight`` and optionally ``teacher``);
        return ``last.pt``.

        An unfinished run in ``out_dir`` (a killed round) is resumed from its last checkpoint.
        """
        out_dir = Path(out_dir)
        base = make_config(self.preset, self.overrides)
        # A round may select very few images: an epoch then cycles through them to fill a batch or more.
        n_images = sum(len(load_json(d.instances)["images"]) for d in datasets)
        epoch_size = base["data.epoch_size"] or max(n_images, 2 * base["train.batch_size"])
        config = make_config(self.preset, {
            "data.epoch_size": epoch_size,
            **self.overrides,
            "data.train_instances": [str(d.instances) for d in datasets],
            "data.train_images": [str(d.images) for d in datasets],
            # Equal weights: sample in proportion to the datasets' sizes (kd-loop sized the mix already).
            "data.train_ratios": [float(d.weight) for d in datasets]
            if len({float(d.weight) for d in datasets}) > 1 else [0.0],
            "train.seed": int(seed),
            "train.init_checkpoint": str(init) if init else "",
            "train.device": self.device,
            **self._distillation(datasets),
        })
        summary = train(config, out_dir, resume=(out_dir / "last.pt").is_file(), echo=self.echo)
        return Path(summary["last"])

    def _distillation(self, datasets: Sequence[Any]) -> dict[str, Any]:
        """The config keys of soft distillation for this mix (none when off or without pseudo-labelled sets)."""
        teachers = [getattr(d, "teacher", None) for d in datasets]
        named = {str(t) for t in teachers if t}
        if not self.soft_distillation or not named:
            return {}
        if len(named) > 1:
            raise ValueError(f"soft distillation takes one teacher per fit, got {sorted(named)}")
        return {"train.distill_weight": self.distill_weight, "train.distill_temperature": self.distill_temperature,
                "train.distill_checkpoint": named.pop(), "data.train_distill": [bool(t) for t in teachers]}

    def predict(self, checkpoint: Path, pool: Path, images: Path, *, out_dir: Path) -> PoolPrediction:
        """Detect and count every pool image; return the results and counts files."""
        out_dir = Path(out_dir)
        results, counts = predict_files(checkpoint, pool, images, out_dir / "results.json", out_dir / "counts.json",
                                        batch_size=self.batch_size, device=self.device, progress=self.echo,
                                        reclassifier=self.reclassifier, reclassifier_power=self.reclassifier_power)
        return PoolPrediction(results=results, counts=counts)
