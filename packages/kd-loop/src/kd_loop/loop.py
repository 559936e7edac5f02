"""The distillation rounds, step by step, each step's artefact written atomically so a run can resume.

Workdir layout::

    round_000/            the source model: fit.json (its checkpoint), predictions.json, counts.json,
                          val_predictions.json (with a val split), metrics.json (with pool ground truth)
    round_001/ ...        pseudo_labels.json and selection.json (from the previous round's predictions),
                          mix.json (+ source_subset_*.json), fit.json, predictions.json, counts.json, metrics.json
    summary.md            one row per round

A step is done when its artefact exists; starting a killed run again continues with the first unfinished
step, and the outputs equal those of an uninterrupted run (every random choice is seeded by round).
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kd_loop import report
from kd_loop.calibration import precision_threshold
from kd_loop.config import ConfigError, LoopConfig
from kd_loop.protocols import Learner, Prediction, TrainingSet
from kd_loop.selection import SelectionPolicy, select_pseudo_labels
from rpc_metrics.io import (
    as_pool,
    atomic_output,
    load_json,
    read_counts,
    read_instances,
    read_results,
    write_json,
)

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_learner(path: str, kwargs: dict[str, Any]) -> Learner:
    """Import ``module:Class`` and construct it with ``kwargs``."""
    module_name, sep, class_name = path.partition(":")
    if not sep:
        raise ConfigError(f"learner.path {path!r} should look like 'package.module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"unknown learner path {path!r} ({err}); install the package that provides it") from None
    learner = cls(**kwargs)
    missing = [m for m in ("fit", "predict") if not callable(getattr(learner, m, None))]
    if missing:
        raise ConfigError(f"learner {path!r} lacks {missing[0]}(); it must implement kd_loop.Learner")
    return learner


def check_inputs(config: LoopConfig) -> None:
    """Fail early, naming the missing file or folder."""
    checks = [("pool.instances", config.path("pool.instances"), "file"), ("pool.images", config.path("pool.images"), "dir")]
    for key in ("pool.gt", "val.instances"):
        if config[key]:
            checks.append((key, config.path(key), "file"))
    if config["val.images"]:
        checks.append(("val.images", config.path("val.images"), "dir"))
    for i, ds in enumerate(config["source.datasets"]):
        checks.append((f"source.datasets[{i}].instances", config.base_dir / ds["instances"], "file"))
        checks.append((f"source.datasets[{i}].images", config.base_dir / ds["images"], "dir"))
    for key, path, kind in checks:
        if not (path.is_dir() if kind == "dir" else path.is_file()):
            raise ConfigError(f"{key}: {kind} {path} not found; fix the path in the config")


class Run:
    """One loop run over a workdir; each method is one resumable step."""

    def __init__(self, config: LoopConfig, workdir: Path, learner: Learner, log: Log = _stderr):
        self.config, self.workdir, self.learner, self.log = config, workdir, learner, log
        self.pool = as_pool(read_instances(config.path("pool.instances")))
        self.pool_images = config.path("pool.images")
        self.seed = int(config["seed"])

    def round_dir(self, r: int) -> Path:
        return self.workdir / f"round_{r:03d}"

    def _step(self, r: int, name: str, artefact: Path, action: Callable[[], str]) -> None:
        if artefact.exists():
            self.log(f"[round {r}] {name}: done earlier ({artefact.name})")
            return
        start = time.perf_counter()
        message = action()
        self.log(f"[round {r}] {name}: {message} ({time.perf_counter() - start:.1f} s)")

    # -- steps -------------------------------------------------------------------------------------------

    def fit_source(self) -> None:
        out = self.round_dir(0)

        def action() -> str:
            given = self.config.path("source.checkpoint")
            if given is not None:
                checkpoint = given
            else:
                checkpoint = self.learner.fit(self.source_sets(), init=None, out_dir=out / "model", seed=self.seed)
            write_json({"checkpoint": str(checkpoint), "datasets": [str(d.instances) for d in self.source_sets()]},
                       out / "fit.json", indent=2)
            return f"source model {checkpoint}"

        self._step(0, "fit source", out / "fit.json", action)

    def select(self, r: int) -> None:
        out, teacher = self.round_dir(r), self.round_dir(r - 1)

        def action() -> str:
            results = read_results(teacher / "predictions.json")
            counts_path = teacher / "counts.json"
            counts = read_counts(counts_path) if counts_path.exists() else None
            threshold, calibrated = self.config.threshold(r), None
            target = float(self.config["selection.target_precision"])
            if target > 0:  # the labelled val split sets it, never the pool's labels
                calibrated = {"target_precision": target, **precision_threshold(
                    read_results(teacher / "val_predictions.json"),
                    read_instances(self.config.path("val.instances")), target)}
                threshold = calibrated["threshold"]
            policy = SelectionPolicy(
                policy=self.config["selection.policy"], threshold=threshold,
                ignore_threshold=min(float(self.config["selection.ignore_threshold"]), threshold),
                count_classes=self.config["selection.count_classes"], min_boxes=int(self.config["selection.min_boxes"]),
                seed=self.seed * 1000 + r,
            )
            dataset, stats = select_pseudo_labels(self.pool, results, counts, policy)
            if calibrated is not None:
                stats["calibration"] = calibrated
            write_json(dataset, out / "pseudo_labels.json")
            write_json(stats, out / "selection.json", indent=2)
            return (f"{stats['selected_images']} of {stats['pool_images']} images, {stats['boxes']} boxes, "
                    f"{stats['ignore_regions']} ignore regions (threshold {stats['threshold']:.2f}"
                    + (f", calibrated on val for precision {target:.2f})" if calibrated is not None else ")"))

        self._step(r, "select", out / "selection.json", action)

    def mix(self, r: int) -> None:
        out = self.round_dir(r)

        def action() -> str:
            n_pseudo = len(load_json(out / "pseudo_labels.json")["images"])
            datasets = []
            if n_pseudo:
                teacher = load_json(self.round_dir(r - 1) / "fit.json")["checkpoint"]
                datasets.append({"instances": str(out / "pseudo_labels.json"), "images": str(self.pool_images),
                                 "weight": 1.0, "teacher": teacher})
            n_source = round(float(self.config["mix.source_ratio"]) * n_pseudo)
            datasets += self._source_subsets(out, n_source, seed=self.seed * 1000 + r)
            write_json({"pseudo_images": n_pseudo, "source_images": n_source, "datasets": datasets},
                       out / "mix.json", indent=2)
            return f"{n_pseudo} pseudo-labelled + {n_source} source images"

        self._step(r, "mix", out / "mix.json", action)

    def fit_student(self, r: int) -> None:
        out = self.round_dir(r)

        def action() -> str:
            mix = load_json(out / "mix.json")
            teacher = Path(load_json(self.round_dir(r - 1) / "fit.json")["checkpoint"])
            if mix["pseudo_images"] == 0:
                write_json({"checkpoint": str(teacher), "note": "no pseudo-labels: the teacher is kept"},
                           out / "fit.json", indent=2)
                return "nothing selected: the student is the teacher"
            sets = [TrainingSet(Path(d["instances"]), Path(d["images"]), float(d["weight"]),
                                Path(d["teacher"]) if d.get("teacher") else None) for d in mix["datasets"]]
            init = teacher if self.config["mix.student_init"] == "teacher" else None
            checkpoint = self.learner.fit(sets, init=init, out_dir=out / "model", seed=self.seed + r)
            write_json({"checkpoint": str(checkpoint)}, out / "fit.json", indent=2)
            return f"student {checkpoint}"

        self._step(r, "fit student", out / "fit.json", action)

    def predict(self, r: int, split: str = "pool") -> None:
        out = self.round_dir(r)
        prefix = "" if split == "pool" else "val_"
        instances = self.config.path(f"{split}.instances")
        images = self.pool_images if split == "pool" else self.config.path("val.images")

        def action() -> str:
            checkpoint = Path(load_json(out / "fit.json")["checkpoint"])
            pool_file = out / f"{prefix}pool.json"
            write_json(as_pool(read_instances(instances)), pool_file)
            prediction: Prediction = self.learner.predict(checkpoint, pool_file, images, out_dir=out / f"{prefix}predict")
            results = read_results(prediction.results)
            if prediction.counts is not None:
                write_json(read_counts(prediction.counts), out / f"{prefix}counts.json")
            write_json(results, out / f"{prefix}predictions.json")
            return f"{len(results)} detections on {split}"

        self._step(r, f"predict {split}", out / f"{prefix}predictions.json", action)

    def measure(self, r: int) -> None:
        """Reporting only, with the pool's ground truth: nothing here feeds the selection."""
        out = self.round_dir(r)
        gt_path = self.config.path("pool.gt")
        if gt_path is None:
            return

        def action() -> str:
            gt = read_instances(gt_path)
            val = {}
            if self.config["val.instances"]:
                val = {"val_results": str(out / "val_predictions.json"), "val_gt": str(self.config.path("val.instances"))}
            metrics = {"round": r, **report.model_metrics(str(out / "predictions.json"), gt,
                                                          search=self.config["evaluate.search"], **val)}
            if r > 0:
                metrics["selection"] = report.selection_quality(load_json(out / "pseudo_labels.json"), gt)
            write_json(metrics, out / "metrics.json", indent=2)
            headline = metrics.get("transfer", metrics["oracle"])
            return f"cAcc {100 * headline['cacc']:.2f}% ({'transfer' if 'transfer' in metrics else 'oracle'})"

        self._step(r, "measure", out / "metrics.json", action)

    # -- helpers -----------------------------------------------------------------------------------------

    def source_sets(self) -> list[TrainingSet]:
        return [TrainingSet(self.config.base_dir / d["instances"], self.config.base_dir / d["images"],
                            float(d.get("weight", 1.0))) for d in self.config["source.datasets"]]

    def _source_subsets(self, out: Path, n: int, *, seed: int) -> list[dict]:
        """``n`` source images drawn without replacement over all source datasets (seeded)."""
        if n <= 0:
            return []
        sources = [read_instances(s.instances) for s in self.source_sets()]
        sizes = np.array([len(s["images"]) for s in sources])
        n = min(n, int(sizes.sum()))
        picks = np.sort(np.random.default_rng(seed).choice(int(sizes.sum()), size=n, replace=False))
        subsets = []
        for k, (spec, data) in enumerate(zip(self.source_sets(), sources, strict=True)):
            lo = int(sizes[:k].sum())
            chosen = picks[(picks >= lo) & (picks < lo + sizes[k])] - lo
            if len(chosen) == 0:
                continue
            images = [data["images"][i] for i in chosen.tolist()]
            ids = {im["id"] for im in images}
            subset = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
            path = out / f"source_subset_{k}.json"
            write_json(subset, path)
            subsets.append({"instances": str(path), "images": str(spec.images), "weight": spec.weight})
        return subsets


def run_loop(config: LoopConfig, *, rounds: int | None = None, workdir: Path | None = None,
             log: Log = _stderr, learner: Learner | None = None) -> Path:
    """Run (or resume) the source model and ``rounds`` distillation rounds; return the summary's path."""
    check_inputs(config)
    workdir = Path(workdir if workdir is not None else config.base_dir / config["workdir"])
    rounds = int(config["rounds"] if rounds is None else rounds)
    learner = learner or load_learner(config["learner.path"], dict(config["learner.kwargs"]))
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(config, workdir, learner, log)
    start = time.perf_counter()
    for r in range(rounds + 1):
        log(f"== round {r}/{rounds} ({time.perf_counter() - start:.0f} s elapsed)")
        if r == 0:
            run.fit_source()
        else:
            run.select(r)
            run.mix(r)
            run.fit_student(r)
        run.predict(r, "pool")
        if config["val.instances"]:
            run.predict(r, "val")
        run.measure(r)
        write_summary(workdir)
    return workdir / "summary.md"


def round_rows(workdir: Path) -> list[dict]:
    """What each finished step of each round recorded, for the summary and ``kd-loop status``."""
    rows = []
    for folder in sorted(Path(workdir).glob("round_[0-9][0-9][0-9]")):
        row: dict[str, Any] = {"round": int(folder.name[6:])}
        if (folder / "selection.json").exists():
            row.update(load_json(folder / "selection.json"))
        if (folder / "metrics.json").exists():
            metrics = load_json(folder / "metrics.json")
            row["selection_quality"] = metrics.get("selection")
            row["transfer"] = metrics.get("transfer")
            row["oracle"] = metrics.get("oracle")
        row["done"] = (folder / "predictions.json").exists()
        rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(rows: list[dict]) -> str:
    """Markdown table of rounds: selection counts, selection precision, cAcc (transfer and oracle)."""
    lines = ["| round | selected images | boxes | ignore regions | image precision | box precision | "
             "cAcc (transfer) | cAcc (oracle) | done |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for row in rows:
        quality = row.get("selection_quality") or {}
        lines.append(
            f"| {row['round']} | {row.get('selected_images', '-')} | {row.get('boxes', '-')} | "
            f"{row.get('ignore_regions', '-')} | {_pct(quality.get('image_precision'))} | "
            f"{_pct(quality.get('box_precision'))} | {_pct((row.get('transfer') or {}).get('cacc'))} | "
            f"{_pct((row.get('oracle') or {}).get('cacc'))} | {'yes' if row['done'] else 'no'} |"
        )
    return "\n".join(lines)


def write_summary(workdir: Path) -> Path:
    path = Path(workdir) / "summary.md"
    text = ("# kd-loop summary\n\nRound 0 is the source model. Precision and cAcc use the pool's ground truth, "
            "for reporting only.\n\n" + format_table(round_rows(workdir)) + "\n")
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path
