"""The demo's model stages: the source models (a shared trunk, then Syn, Syn+histogram, Syn+Render), their
predictions, kd-loop's rounds, the two same-compute controls and the before/after figures.

Every stage runs the toolkit's own command line (`dpsnet`, `kd-loop`); predictions of one process run in this
process (a torch start saved per split). `aco_pipeline.Pipeline` adds the data stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from aco_recipe import SOURCE_MODELS, Layout, Recipe
from aco_report import best_source, last_stage_files, transfer_threshold
from aco_stages import InputError, Stage, resume_args, run_command, tool

from rpc_metrics.io import as_pool, load_json, read_instances, write_json
from rpc_metrics.toml import parse_override, to_toml


class ModelStages:
    """The training, prediction and distillation stages of a run, from its recipe and layout."""

    def __init__(self, recipe: Recipe, layout: Layout):
        self.r, self.p = recipe, layout

    def run(self, args: Sequence) -> None:
        run_command(args, threads=self.r.threads)

    def launcher(self, module: str) -> list[str]:
        """`dpsnet ...`, or `torchrun --nproc-per-node N -m dpsnet ...` for several processes."""
        if self.r.nproc > 1:
            return [tool("torchrun"), "--nproc-per-node", str(self.r.nproc), "-m", module]
        return [tool(module)]

    def train_overrides(self, names: Sequence[str], steps: int | None) -> list[str]:
        data = [self.p.dataset(n) for n in names]
        overrides = [
            "data.train_instances=" + ",".join(str(j) for j, _ in data),
            "data.train_images=" + ",".join(str(i) for _, i in data),
            # Two sets: half of every batch from each, as the paper's Syn+Render mixes them.
            "data.train_ratios=" + ",".join("1.0" for _ in data) if len(data) > 1 else "data.train_ratios=0.0",
            f"train.seed={self.r.seed}",
        ]
        if self.backbone_weights() is not None:
            overrides.append(f"model.backbone_weights={self.backbone_weights()}")
        if steps is not None:
            # A step schedule's drops then fall at 2/3 and 8/9 of the run, as the presets' [0] means.
            overrides += [f"train.max_steps={steps}", "train.lr_steps=[0]"]
        if self.r.source_minutes is not None:
            overrides.append(f"train.time_limit_min={self.r.source_minutes}")
        return overrides + list(self.r.dpsnet_set)

    def backbone_weights(self) -> Path | None:
        if self.r.backbone_weights is not None:
            return self.r.backbone_weights
        return self.p.out / "pretrain" / "backbone.pt" if self.r.pretrain_steps > 0 else None

    def reclassifier(self) -> Path | None:
        """The crop classifier that re-scores predictions: the pretraining file, when pretraining runs."""
        if self.r.backbone_weights is None and self.r.pretrain_steps > 0 and self.r.reclassify_power:
            return self.backbone_weights()
        return None

    def reclassify_setting(self) -> float | None:
        """The re-scoring power a stage records in its settings (None: no re-scoring)."""
        return self.r.reclassify_power if self.reclassifier() else None

    def train_budget(self, steps: int | None, minutes: float | None) -> float:
        """Expected seconds of a training run: startup + steps x seconds per step, at most the time limit."""
        b = self.r.budgets
        expected = b["startup"] + (steps or 0) * b["train_step"]
        return min(expected, b["startup"] + 60 * minutes) if minutes else expected

    def source_choice(self) -> str:
        """The source model distillation starts from: the best val cAcc (no test label)."""
        return best_source(self.p, [key for key, _, _ in SOURCE_MODELS])

    def train(self, run_dir: Path, overrides: Sequence[str]) -> None:
        """`dpsnet train` into ``run_dir``, resuming from its last checkpoint when there is one."""
        self.run([*self.launcher("dpsnet"), "train", "--config", self.r.preset, "--out", run_dir, *resume_args(run_dir),
                  *overrides])

    def trunk_stage(self) -> Stage:
        """The Syn model that every source model fine-tunes (no predictions: the branches are evaluated)."""
        r = self.r
        overrides = self.train_overrides(("synth",), r.source_trunk_steps)
        return Stage("source_trunk", f"shared trunk of the source models, Syn (dpsnet train --config {r.preset})",
                     self.train_budget(r.source_trunk_steps, None),
                     {"preset": r.preset, "overrides": overrides, "nproc": r.nproc},
                     lambda: self.train(self.p.model("trunk"), overrides))

    def source_overrides(self, names: Sequence[str]) -> list[str]:
        overrides = self.train_overrides(names, self.r.source_steps)
        if self.r.source_trunk_steps > 0:
            # After dpsnet's own overrides from the recipe, so that these win: a fine-tune of the trunk.
            overrides += [f"train.init_checkpoint={self.p.model('trunk') / 'last.pt'}",
                          f"train.lr={self.r.source_branch_lr}", "train.warmup_steps=20"]
        return overrides

    def source_stage(self, key: str, title: str, names: Sequence[str]) -> Stage:
        r = self.r
        budget = self.train_budget(r.source_steps, r.source_minutes) + r.budgets["predict_per_model"]
        overrides = self.source_overrides(names)

        def action() -> None:
            run_dir = self.p.model(key)
            self.train(run_dir, overrides)
            # Without a val split its stand-in, the held-out set, is predicted once (Layout.predictions maps it).
            for split in [s for s in ("val", "test") if self.p.has_split(s)] + ["synth_heldout"]:
                instances, images = self.p.dataset(split) if split == "synth_heldout" else self.p.split(split)
                self.predict(run_dir / "last.pt", instances, images, *self.p.predictions(key, split))

        return Stage(f"source_{key}", f"source model {title} (dpsnet train --config {r.preset}, predict)", budget,
                     {"preset": r.preset, "data": list(names), "overrides": overrides,
                      "nproc": r.nproc, "reclassify_power": self.reclassify_setting()},
                     action)

    def torch_threads(self) -> None:
        """The recipe's thread count for torch work done in this process (predictions, figures)."""
        if self.r.threads > 0:
            import torch

            torch.set_num_threads(self.r.threads)

    def predict(self, checkpoint: Path, instances: Path, images: Path, results: Path, counts: Path) -> None:
        """`dpsnet predict`; in this process for one process (saves a torch start per split), else torchrun."""
        reclassifier = self.reclassifier()
        if self.r.nproc > 1:
            extra = ["--reclassifier", reclassifier, "--reclassifier-power", self.r.reclassify_power] \
                if reclassifier else []
            self.run([*self.launcher("dpsnet"), "predict", "--checkpoint", checkpoint, "--instances", instances,
                         "--images", images, "--out-results", results, "--out-counts", counts, "--quiet", *extra])
            return
        from dpsnet.inference import predict_files
        from rpc_metrics.io import FormatError

        self.torch_threads()
        click.echo(f"  predict {instances} -> {results.name}", err=True)
        try:
            predict_files(checkpoint, instances, images, results, counts, progress=False, reclassifier=reclassifier,
                          reclassifier_power=self.r.reclassify_power or 0.0)
        except (FileNotFoundError, FormatError) as err:
            raise InputError(str(err)) from None

    def kd_config(self) -> dict:
        r, p = self.r, self.p
        choice = self.source_choice()
        names = next(n for k, _, n in SOURCE_MODELS if k == choice)
        overrides = {}
        if r.kd_steps is not None:
            overrides.update({"train.max_steps": r.kd_steps, "train.lr_steps": [0]})
        if r.kd_minutes is not None:
            overrides["train.time_limit_min"] = r.kd_minutes
        if r.kd_lr is not None:
            overrides.update({"train.lr": r.kd_lr, "train.warmup_steps": 20})
        for item in r.dpsnet_set:
            key, value = parse_override(item)
            overrides[key] = value
        # kd-loop resolves relative paths against its config's folder: give it absolute ones.
        test_json, test_images, val_json, val_images = (Path(x).resolve() for x in (*p.split("test"), *p.split("val")))
        test = {"test": {"instances": str(test_json), "images": str(test_images)}} if p.has_split("test") else {}
        if self.distils_on_test():  # the paper's use: the test images are the pool (labels dropped on load)
            pool = {"instances": str(test_json), "images": str(test_images), "gt": str(test_json)}
        else:
            pool_json, pool_images = (Path(x).resolve() for x in p.split("pool"))
            truth = p.pool_truth()
            pool = {"instances": str(pool_json), "images": str(pool_images),
                    **({"gt": str(truth.resolve())} if truth else {})}
        learner = {"preset": r.preset, "overrides": overrides, "echo": True}
        reclassifier = self.reclassifier()
        if reclassifier:
            learner.update({"reclassifier": str(reclassifier.resolve()), "reclassifier_power": r.reclassify_power})
        return {
            "rounds": r.kd_rounds, "seed": r.seed, "workdir": str((p.out / "kd").resolve()),
            "learner": {"path": "dpsnet.kd:Learner", "kwargs": learner},
            "source": {"checkpoint": str((p.model(choice) / "last.pt").resolve()),
                       "datasets": [{"instances": str(Path(j).resolve()), "images": str(Path(i).resolve())}
                                    for j, i in map(p.dataset, names)]},
            # kd-loop drops the pool's annotations on load; `gt` and the test split are for reporting only.
            "pool": pool,
            "val": {"instances": str(val_json), "images": str(val_images)},
            **test,
        }, choice

    def kd_stage(self) -> Stage:
        r = self.r
        per_round = self.train_budget(r.kd_steps, r.kd_minutes) + r.budgets["kd_predict_per_round"]

        def action() -> None:
            config, choice = self.kd_config()
            click.echo(f"  source model for distillation (best cAcc on {self.p.calibration_name()}): {choice}",
                       err=True)
            path = self.p.out / "kd" / "loop.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json({"source_model": choice}, self.p.out / "kd" / "source_choice.json", indent=2)
            path.write_text(to_toml(config), encoding="utf-8")
            self.run([tool("kd-loop"), "run", path, *r.kd_set])

        settings = {"rounds": r.kd_rounds, "steps": r.kd_steps, "transductive": r.transductive, "minutes": r.kd_minutes, "lr": r.kd_lr, "set": list(r.kd_set),
                    "dpsnet_set": list(r.dpsnet_set), "preset": r.preset,
                    "reclassify_power": self.reclassify_setting()}
        # A given RPC folder is there already; a generated world has a pool (known before it is built).
        on_test = r.transductive or (r.rpc_root is not None and not self.p.has_pool())
        pool = "the test images (transductive)" if on_test else "the unlabeled pool"
        return Stage("kd", f"kd-loop: {r.kd_rounds} distillation round(s) on {pool}",
                     r.budgets["kd_predict_per_round"] + r.kd_rounds * per_round, settings, action)

    def bundle_stage(self) -> Stage:
        """The final model as a deployment bundle (`dpsnet export`) at its transfer threshold: `bundle.pt`, what
        `dpsnet count` and `dpsnet.Counter` load."""
        r = self.r
        return Stage("bundle", "the final model as a deployment bundle (dpsnet export)", r.budgets["bundle"],
                     {"rounds": r.kd_rounds, "reclassify_power": self.reclassify_setting()}, self.export_bundle)

    def export_bundle(self) -> None:
        r = self.r
        files = last_stage_files(self.p, r, [(k, t) for k, t, _ in SOURCE_MODELS])
        threshold = transfer_threshold(files["val"], self.p.split("val")[0])
        self.export(files["checkpoint"], f"{threshold:.6f}")

    def export(self, checkpoint: Path | str, threshold: str) -> None:
        """`dpsnet export --format bundle` of ``checkpoint`` at ``threshold``, with the run's re-scoring."""
        reclassifier = self.reclassifier()
        extra = ["--reclassifier", reclassifier, "--reclassifier-power", self.r.reclassify_power] if reclassifier else []
        self.run([tool("dpsnet"), "export", "--format", "bundle", "--checkpoint", checkpoint, "--threshold", threshold,
                  "--protocol", f"transfer ({self.p.calibration_name()})", *extra, "--out", self.p.out / "bundle.pt"])

    def control_stages(self) -> list[Stage]:
        """kd-loop's controls at the loop's compute: random selection, and the rounds' steps on synthesized data."""
        import kd_controls

        r = self.r
        per_round = self.train_budget(r.kd_steps, r.kd_minutes) + r.budgets["kd_predict_per_round"]
        settings = {"rounds": r.kd_rounds, "steps": r.kd_steps, "set": list(r.kd_set)}

        def loop() -> dict:
            return kd_controls.read_loop(self.p.out)

        return [
            Stage("control_random", "control: the loop with random pseudo-labels (kd-loop, same compute)",
                  r.kd_rounds * per_round, settings,
                  lambda: kd_controls.random_control(self.p.out, loop(), list(r.kd_set), threads=r.threads)),
            Stage("control_steps", "control: the source model, as many more steps on synthesized data (dpsnet train)",
                  self.train_budget(r.kd_rounds * (r.kd_steps or 0), None) + r.budgets["predict_per_model"], settings,
                  lambda: kd_controls.steps_control(self.p.out, loop(), threads=r.threads)),
        ]

    def visualize(self) -> None:
        """Test (else pool) images, one per level first, with detections and density maps, before and after
        distillation."""
        p = self.p
        # The test images, or (no test split) the pool's photos: pictures need no labels.
        test_json, test_images = p.split("test" if p.has_split("test") else "pool")
        test = read_instances(test_json)
        by_level: dict[str, list] = {}
        for image in test["images"]:
            by_level.setdefault(image.get("level", "all"), []).append(image)
        picks = [group[i] for i in range(len(test["images"])) for group in by_level.values() if i < len(group)]
        picks = picks[: self.r.vis_images]
        figures = p.out / "figures"
        pool = {**as_pool(test), "images": picks}
        write_json(pool, figures / "vis_pool.json")
        choice = load_json(p.out / "kd" / "source_choice.json")["source_model"]
        rounds = self.r.kd_rounds
        last = Path(load_json(p.out / "kd" / f"round_{rounds:03d}" / "fit.json")["checkpoint"])
        before = (p.model(choice) / "last.pt", *p.predictions(choice, "val")[:1])
        after = (last, p.out / "kd" / f"round_{rounds:03d}" / "val_predictions.json")
        val_json = p.split("val")[0]
        from dpsnet.inference import visualize_files

        self.torch_threads()
        for name, (checkpoint, val_results) in (("before", before), ("after", after)):
            threshold = transfer_threshold(val_results, val_json)
            # What `dpsnet visualize` does, in this process (which has torch loaded already: a start saved).
            click.echo(f"  visualize {checkpoint} -> figures/vis_{name} (score >= {threshold:.4f})", err=True)
            visualize_files(checkpoint, figures / "vis_pool.json", test_images, figures / f"vis_{name}",
                            limit=len(picks), score_thresh=threshold)
