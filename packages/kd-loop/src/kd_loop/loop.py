"""The distillation rounds, step by step, each step's artefact written atomically so a run can resume.

Workdir layout::

    round_000/            the source model: fit.json (its checkpoint), predictions.json, counts.json,
                          val_predictions.json (with a val split), calibration_predictions.json (with a
                          calibration split other than val, when the selection calibrates), test_predictions.json
                          (with a test split other than the pool), metrics.json (with pool.gt or a test split)
    round_001/ ...        pseudo_labels.json and selection.json (from the previous round's predictions),
                          mix.json (+ source_subset_*.json), fit.json, then the predictions and metrics as above
    summary.md            one row per round, and a loud note per round that kept too few images or none
    settings.json         what the outputs depend on (kd_loop.resume); a resume with other settings is refused

A step is done when its artefact exists; starting a killed run again continues with the first unfinished
step, and the outputs equal those of an uninterrupted run (every random choice is seeded by round).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kd_loop import report
from kd_loop.calibration import count_scale, precision_threshold
from kd_loop.config import ConfigError, LoopConfig
from kd_loop.learners import check_learner_kwargs, learner_class, load_learner
from kd_loop.protocols import Learner, Prediction, TrainingSet
from kd_loop.resume import keep_settings
from kd_loop.selection import IMAGE_LEVEL, SelectionPolicy, select_pseudo_labels
from kd_loop.summary import format_table as format_table  # kept importable from here, their former home
from kd_loop.summary import round_rows as round_rows
from kd_loop.summary import selection_notes, write_summary
from rpc_metrics.cliargs import output_problem
from rpc_metrics.io import (
    as_pool,
    load_json,
    read_counts,
    read_instances,
    read_results,
    write_json,
)

Log = Callable[[str], None]
# Artefact name prefix of each split's predictions in a round folder.
PREFIX = {"pool": "", "val": "val_", "calibration": "calibration_", "test": "test_"}
LABELLED = ("val", "calibration", "test")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_inputs(config: LoopConfig) -> None:
    """Fail early, naming the missing file or folder, or the labelled split without labels."""
    checks = [("pool.instances", config.path("pool.instances"), "file"), ("pool.images", config.path("pool.images"), "dir")]
    if config["pool.gt"]:
        checks.append(("pool.gt", config.path("pool.gt"), "file"))
    for split in LABELLED:
        if config[f"{split}.instances"]:
            checks += [(f"{split}.instances", config.path(f"{split}.instances"), "file"),
                       (f"{split}.images", config.path(f"{split}.images"), "dir")]
    for i, ds in enumerate(config["source.datasets"]):
        checks.append((f"source.datasets[{i}].instances", config.base_dir / ds["instances"], "file"))
        checks.append((f"source.datasets[{i}].images", config.base_dir / ds["images"], "dir"))
    for key, path, kind in checks:
        if not (path.is_dir() if kind == "dir" else path.is_file()):
            raise ConfigError(f"{key}: {kind} {path} not found; fix the path in the config")
    for split in LABELLED:
        if config[f"{split}.instances"] and not load_json(config.path(f"{split}.instances")).get("annotations"):
            raise ConfigError(f"{split}.instances: {config.path(f'{split}.instances')} has no annotations; the {split} "
                              "split needs ground truth (an unlabeled pool goes in pool.instances)")
    split = calibration_split(config)
    pool_files = [config.path(key) for key in ("pool.instances", "pool.gt") if config[key]]
    if split and calibrates(config) and any(_same_path(config.path(f"{split}.instances"), f) for f in pool_files):
        raise ConfigError(f"{split}.instances is the pool's own file: calibrating on it would show the pool's labels "
                          "to the selection; name another labelled split (calibration.instances), or set "
                          "selection.count_scale=none and selection.target_precision=0")


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def calibration_split(config: LoopConfig) -> str | None:
    """The labelled split the selection calibrates on: ``calibration``, ``val`` (also when the calibration keys
    name the val split's files), or None."""
    if not config["calibration.instances"]:
        return "val" if config["val.instances"] else None
    same = [_same_path(config.path(f"calibration.{kind}"), config.path(f"val.{kind}")) for kind in ("instances", "images")
            if config["val.instances"]]
    return "val" if same and all(same) else "calibration"


def calibrates(config: LoopConfig, round_index: int | None = None) -> bool:
    """Whether round ``round_index``'s selection (None: any round's) reads the calibration split: for its
    threshold, or for an 'auto' count scale with an image-level policy."""
    if round_index is None:
        policies = [config.policy(r) for r in range(1, len(config["selection.policies"]) + 2)]
    else:
        policies = [config.policy(round_index)]
    counts_used = any(p in IMAGE_LEVEL for p in policies) and config["selection.count_scale"] == "auto"
    return float(config["selection.target_precision"]) > 0 or counts_used


class Run:
    """One loop run over a workdir; each method is one resumable step."""

    def __init__(self, config: LoopConfig, workdir: Path, learner: Learner, log: Log = _stderr):
        self.config, self.workdir, self.learner, self.log = config, workdir, learner, log
        self._round_learners: dict[str, Learner] = {}
        self.pool = as_pool(read_instances(config.path("pool.instances")))
        self.pool_images = config.path("pool.images")
        self.seed = int(config["seed"])
        self.calibration = calibration_split(config)
        # The transductive use: the test split is the pool itself, whose predictions are reused.
        self.transductive = bool(config["test.instances"]) and all(
            _same_path(a, b) for a, b in zip(self.split_files("test"), self.split_files("pool"), strict=True))

    def learner_for(self, r: int) -> Learner:
        """Round ``r``'s learner: the run's own unless ``learner.round_kwargs`` gives the round other keyword
        arguments, then one built from ``learner.path`` with them (one per distinct set, reused)."""
        kwargs = self.config.learner_kwargs(r)
        if kwargs == dict(self.config["learner.kwargs"]):
            return self.learner
        key = json.dumps(kwargs, sort_keys=True, default=str)
        if key not in self._round_learners:
            self._round_learners[key] = load_learner(self.config["learner.path"], kwargs)
        return self._round_learners[key]

    def round_dir(self, r: int) -> Path:
        return self.workdir / f"round_{r:03d}"

    def split_files(self, split: str) -> tuple[Path, Path]:
        """The instances JSON and image folder of ``split`` (pool, val, calibration or test)."""
        if split == "pool":
            return self.config.path("pool.instances"), self.pool_images
        return self.config.path(f"{split}.instances"), self.config.path(f"{split}.images")

    def splits_to_predict(self, r: int, rounds: int) -> list[str]:
        """The splits round ``r``'s model predicts: the pool, val, the calibration split when the next round's
        selection calibrates on it (and it is not val), the test split unless it is the pool."""
        splits = ["pool"]
        if self.config["val.instances"]:
            splits.append("val")
        if self.calibration == "calibration" and r < rounds and calibrates(self.config, r + 1):
            splits.append("calibration")
        if self.config["test.instances"] and not self.transductive:
            splits.append("test")
        return splits

    def _step(self, r: int, name: str, artefact: Path, action: Callable[[], str]) -> None:
        if artefact.exists():
            self.log(f"[round {r}] {name}: done earlier ({artefact.name})")
            return
        start = time.perf_counter()
        first, *loud = action().split("\n")
        self.log("\n".join([f"[round {r}] {name}: {first} ({time.perf_counter() - start:.1f} s)", *loud]))

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
            # The labelled calibration split sets the threshold and the count scale, never the pool's labels.
            labelled = self._teacher_on_calibration(r - 1)
            threshold, calibrated, policy_name = self.config.threshold(r), None, self.config.policy(r)
            target = float(self.config["selection.target_precision"])
            if target > 0:
                calibrated = {"target_precision": target, **precision_threshold(
                    read_results(labelled[0]), labelled[2], target)}
                threshold = calibrated["threshold"]
            scale = None
            if policy_name in IMAGE_LEVEL:
                scale = {"split": self.calibration, **count_scale(
                    self.config["selection.count_scale"], *(labelled[1:] if labelled else (None, None)))}
            policy = SelectionPolicy(
                policy=policy_name, threshold=threshold,
                ignore_threshold=min(float(self.config["selection.ignore_threshold"]), threshold),
                count_classes=self.config["selection.count_classes"], min_boxes=int(self.config["selection.min_boxes"]),
                seed=self.seed * 1000 + r, count_scale=scale["scale"] if scale else 1.0,
                min_images=math.ceil(round(float(self.config["selection.min_share"]) * len(self.pool["images"]), 9)),
                fallback=self.config["selection.fallback"],
            )
            dataset, stats = select_pseudo_labels(self.pool, results, counts, policy)
            if calibrated is not None:
                stats["calibration"] = calibrated
            if scale is not None:
                stats["count_calibration"] = scale
            write_json(dataset, out / "pseudo_labels.json")
            write_json(stats, out / "selection.json", indent=2)
            return self._selection_message(r, stats)

        self._step(r, "select", out / "selection.json", action)

    def _teacher_on_calibration(self, r: int) -> tuple[Path, dict | None, dict] | None:
        """Round ``r``'s predictions (results path, counts or None) on the calibration split and its ground
        truth; None without a calibration split or its predictions."""
        if self.calibration is None:
            return None
        folder, prefix = self.round_dir(r), PREFIX[self.calibration]
        if not (folder / f"{prefix}predictions.json").exists():
            return None
        counts_path = folder / f"{prefix}counts.json"
        return (folder / f"{prefix}predictions.json", read_counts(counts_path) if counts_path.exists() else None,
                read_instances(self.split_files(self.calibration)[0]))

    def _selection_message(self, r: int, stats: dict) -> str:
        calibrated = stats.get("calibration")
        scale = stats.get("count_calibration")
        agreed = ("" if stats["agreeing_images"] is None else
                  f" ({stats['agreeing_images']} agreeing, {stats['fallback_images']} by fallback)")
        message = (f"{stats['selected_images']} of {stats['pool_images']} images{agreed}, {stats['boxes']} boxes, "
                   f"{stats['ignore_regions']} ignore regions (threshold {stats['threshold']:.2f}"
                   + (f", calibrated on {self.calibration} for precision {calibrated['target_precision']:.2f}"
                      if calibrated else "")
                   + (f"; count scale {scale['scale']:.3g}, {scale['method']}" if scale else "") + ")")
        return "".join([message, *(f"\n    !! {note.strip('*')}" for note in selection_notes(r, stats))])

    def mix(self, r: int) -> None:
        out = self.round_dir(r)

        def action() -> str:
            n_pseudo = len(load_json(out / "pseudo_labels.json")["images"])
            datasets = []
            if n_pseudo:
                teacher = load_json(self.round_dir(r - 1) / "fit.json")["checkpoint"]
                datasets.append({"instances": str(out / "pseudo_labels.json"), "images": str(self.pool_images),
                                 "weight": 1.0, "teacher": teacher})
            n_source = self.config.source_images(r, n_pseudo)
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
            checkpoint = self.learner_for(r).fit(sets, init=init, out_dir=out / "model", seed=self.seed + r)
            write_json({"checkpoint": str(checkpoint)}, out / "fit.json", indent=2)
            return f"student {checkpoint}"

        self._step(r, "fit student", out / "fit.json", action)

    def predict(self, r: int, split: str = "pool") -> None:
        out = self.round_dir(r)
        prefix = PREFIX[split]
        instances, images = self.split_files(split)

        def action() -> str:
            checkpoint = Path(load_json(out / "fit.json")["checkpoint"])
            pool_file = out / f"{prefix}pool.json"
            write_json(as_pool(read_instances(instances)), pool_file)
            prediction: Prediction = self.learner_for(r).predict(checkpoint, pool_file, images,
                                                                 out_dir=out / f"{prefix}predict")
            results = read_results(prediction.results)
            if prediction.counts is not None:
                write_json(read_counts(prediction.counts), out / f"{prefix}counts.json")
            write_json(results, out / f"{prefix}predictions.json")
            return f"{len(results)} detections on {split}"

        self._step(r, f"predict {split}", out / f"{prefix}predictions.json", action)

    def measure(self, r: int) -> None:
        """Reporting only, with the pool's and the test split's ground truth: nothing here feeds the selection."""
        out = self.round_dir(r)
        gt_path, test_path = self.config.path("pool.gt"), self.config.path("test.instances")
        if gt_path is None and test_path is None:
            return

        def action() -> str:
            val, search = {}, self.config["evaluate.search"]
            if self.config["val.instances"]:
                val = {"val_results": str(out / "val_predictions.json"), "val_gt": str(self.config.path("val.instances"))}
            metrics: dict[str, Any] = {"round": r}
            if gt_path is not None:
                gt = read_instances(gt_path)
                metrics.update(report.model_metrics(str(out / "predictions.json"), gt, search=search, **val))
                if r > 0:
                    metrics["selection"] = report.selection_quality(load_json(out / "pseudo_labels.json"), gt)
            if test_path is not None:
                results = out / ("predictions.json" if self.transductive else "test_predictions.json")
                metrics["test"] = {"transductive": self.transductive, **report.model_metrics(
                    str(results), read_instances(test_path), search=search, **val)}
            write_json(metrics, out / "metrics.json", indent=2)
            return "; ".join(f"{name} cAcc {100 * m.get('transfer', m['oracle'])['cacc']:.2f}% "
                             f"({'transfer' if 'transfer' in m else 'oracle'})"
                             for name, m in (("pool", metrics), ("test", metrics.get("test"))) if m and "oracle" in m)

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
    if problem := output_problem(workdir, folder=True):  # before the learner is built or anything is written
        raise ConfigError(f"workdir {workdir}: {problem}")
    if learner is None:  # every round's keyword arguments checked before the first round
        check_learner_kwargs(learner_class(config["learner.path"]), config["learner.path"],
                             [config.learner_kwargs(r) for r in range(max(rounds, len(config["learner.round_kwargs"])) + 1)])
        learner = load_learner(config["learner.path"], dict(config["learner.kwargs"]))
    keep_settings(workdir, config)  # a resume with other settings is refused here, before anything is written
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
        for split in run.splits_to_predict(r, rounds):
            run.predict(r, split)
        run.measure(r)
        write_summary(workdir)
    return workdir / "summary.md"
