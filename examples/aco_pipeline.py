"""The whole ACO system on the embedded mini world (called by `make demo`), every stage resumable.

mini world -> masks -> pose pruning -> synthesized train + held-out sets -> backbone pretraining on synthesized
product crops -> render (translator, and histogram matching as the baseline) -> three DPSNet source models (Syn,
Syn+histogram, Syn+Render; the same training budget each) -> kd-loop rounds from the best one (chosen on
the val split) over the unlabeled test images -> evaluation of every stage with rpc-metrics -> report.

Every stage runs the toolkit's own command line (`rpc-synth`, `dpsnet`, `kd-loop`), so the presets and
their changes apply as they are. A stage whose record exists in OUT/stages/ is skipped; see aco_stages.py.
`rpc_paper.py` runs the same flow on the real RPC files.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
from aco_report import best_source, transfer_threshold, write_report
from aco_stages import InputError, Stage, StageRunner, clock, parse_toml_value, run_command, to_toml, tool

from rpc_metrics.io import as_pool, load_json, read_instances, write_json


@dataclass(frozen=True)
class Recipe:
    """Sizes and budgets of a run (the defaults: the full demo, 27.5 minutes from a fresh clone with the install on
    a 2-core Intel Xeon with AMX; demo20's slightly longer recipe took 20.5 on a 2-core AMD EPYC with AVX512-BF16;
    a float32-only CPU is slower: README)."""

    seed: int = 0
    workers: int = 2
    threads: int = 0  # CPU threads per command (0: all cores; the demo runs alone); 1 on a CPU shared with other jobs
    # The world: built by `rpc-synth world` with these options, or read from an RPC-layout folder.
    rpc_root: Path | None = None
    world_args: tuple[str, ...] = ()
    refine_px: int = 400
    # Synthesis and rendering.
    synth_images: int = 800
    heldout_images: int = 100
    synth_size: int | None = None
    synth_args: tuple[str, ...] = ()  # more `rpc-synth generate` options for both synthesized sets
    # Product scale, objects per tray and overlap of the synthesized images fitted to the val split's boxes
    # (`rpc-synth fit`) instead of generate's defaults, which suit one world only.
    fit_synthesis: bool = True
    # Distil on the test images themselves, as the paper does (transductive), instead of the world's unlabeled
    # pool (pool2019/); forced when the data has no pool.
    transductive: bool = False
    # The distillation's two same-compute controls (random pseudo-labels; as many more steps on synthesized data),
    # run after the report's other stages and compared with the last round in the report.
    controls: bool = False
    # How Syn+Render's images are rendered toward the checkout domain (`rpc-synth render apply --method`):
    # "camera" (histogram matching, then blur, sensor noise and JPEG fitted to the unlabeled checkout photos) or
    # "cyclegan" (the translator, trained render_iters iterations on render_crop px crops).
    render_method: str = "camera"
    render_iters: int = 400
    render_crop: int = 96
    render_images: int | None = None  # translate only the first N synthesized images (None: all)
    measure_images: int | None = 200  # the rendering's domain gap measured on the first N translated images
    # Backbone: `dpsnet pretrain` steps (0: none) or a weights file (ImageNet for the ResNets).
    pretrain_steps: int = 3000
    pretrain_batch: int = 64
    # Share of the pretraining crops that also get camera effects (colour cast, blur, noise, JPEG). On runs/demo7's
    # crops (3000 steps): checkout val crops named right 87.2% -> 89.9%, held-out synthesized crops 91.4% -> 94.0%;
    # 1.0 gave 88.8% / 91.4%. The same effects on the detector's training images (`data.camera`) did not help.
    pretrain_camera: float = 0.5
    # Pair specialists (dpsnet pretrain --specialist-steps): the SKU pairs the classifier confuses on its held-out
    # crops (the demo's 3 of 4 look-alike pairs) each get a two-class classifier from the pretrained body. Added
    # to runs/demo11's classifier (400 steps each): checkout test products named right from their true boxes
    # 88.5% -> 92.9% (look-alike errors 121 -> 56); its round-3 model re-scored with them, transfer cAcc
    # 22.50% -> 25.83%, ACD 3.34 -> 2.28 (power 1; README). 2000 steps instead of 400 (80 s each on a 2-core
    # EPYC, against 16): within-pair test crops 1/21 89% -> 99%, 2/22 92% -> 93%, 4/24 81% -> 86%, and
    # runs/demo19's round-3 model re-scored with them 36.67% -> 40.83% transfer cAcc, ACD 1.76 -> 1.53. 1200
    # since: with 2000 the whole demo took 27 min 09 s on a 2-core Xeon with AMX (runs/demo22), 29 from a fresh
    # clone, too close to the 30; 1200 steps with 4 pairs re-scored demo19's round 3 to 40.83% as well.
    pretrain_specialist_steps: int = 1200
    backbone_weights: Path | None = None
    # The pretrained crop classifier re-scores every prediction's detections (dpsnet predict --reclassifier;
    # None or 0: off; only with `dpsnet pretrain` weights). On the demo's kd stage (runs/demo6's source model,
    # same settings): transfer cAcc 12.50/17.50/17.50/17.50% -> 15.83/20.83/20.00/20.00% (source, rounds 1-3).
    # With the specialists, power 0.5 / 1 / 2 gave runs/demo11's round-3 model val cAcc 28.33 / 33.33 / 33.33%
    # and val ACD 2.85 / 2.23 / 1.92 (without them, 21.67% and 3.42): 2, chosen on val.
    reclassify_power: float | None = 2.0
    # DPSNet source models: the same steps each. The steps decide, not the clock (0 minutes: no time limit; None:
    # the preset's): a time limit makes the results depend on the machine. On a 2-core AMD EPYC (AVX2) that trains
    # at 5 images/s instead of 13, the former 4.5-minute limit stopped the source models at 357 of 740 steps, mid
    # cosine schedule (transfer cAcc Syn / Syn+histogram / Syn+Render 10.83 / 12.50 / 4.17%, against
    # 15.00 / 16.67 / 17.50% at 740 steps on the same machine: runs/demo10 vs runs/demo11).
    preset: str = "cpu-small"
    source_steps: int | None = 500
    # A shared trunk: one model trained on Syn for this many steps (0: none), which every source model then
    # fine-tunes for `source_steps` on its own data at `source_branch_lr` (same budget each, and each sees
    # trunk + branch steps for the price of one trunk). 1110 + 3 x 370 steps cost what 3 x 740 did, and each
    # source model sees 1480 (the detector underfits on this budget). From the same data and backbone (runs/g1
    # -> runs/g2, 2-core CPU): transfer cAcc Syn / Syn+histogram / Syn+Render 18.33 / 25.00 / 24.17% ->
    # 21.67 / 20.83 / 24.17%, mmAP 51.9-53.1% -> 56.6-60.7%, round 3 31.67% -> 33.33% (ACD 1.86 -> 1.64, mAP50
    # 91.11 -> 92.47%); on an H200 (runs/gA -> runs/gC): 20.83 / 18.33 / 15.83% -> 24.17 / 23.33 / 24.17%,
    # round 3 26.67% -> 30.83% (docs/RESULTS.md). Since demo19 1500 + 3 x 500 (and 400 steps per kd round instead of
    # 300): bfloat16 autocast on CPUs with AVX512-BF16 (AMD Zen 4) made a step about 1.4x faster there, and the
    # detector underfits; on a float32-only CPU of the same speed the demo takes about 5 minutes more.
    source_trunk_steps: int = 1500
    source_branch_lr: float = 0.01
    source_minutes: float | None = 0.0
    dpsnet_set: tuple[str, ...] = ()
    nproc: int = 1
    # kd-loop.
    kd_rounds: int = 3
    kd_steps: int | None = 400
    kd_minutes: float | None = 0.0  # no time limit: the steps decide (as for the source models)
    # Students fine-tune their teacher at a quarter of the preset's peak rate, short warmup. 0.01 rather than 0.005:
    # on demo15's and demo14's source models, round 3 at 30.00 / 28.33% against 28.33 / 23.33% (ACD 1.84 / 1.84
    # against 1.93 / 2.07), and +3.33 points over kd_controls.py's better control against +1.67 on demo15.
    kd_lr: float | None = 0.01
    # The paper's policy: an image is pseudo-labelled when the counting view agrees with its detections (in total:
    # the preset's one-class counter), its detections from 0.02 up that miss the threshold becoming ignore regions.
    # The threshold is calibrated each round on the labelled val split to the teacher's 95% box precision (a
    # detector's scores drift between rounds and worlds; a fixed schedule was tuned to one world), and kd-loop
    # scales the counter to the val counts and tops up with the images closest to agreement when fewer than a
    # tenth of the pool agree (its defaults).
    kd_set: tuple[str, ...] = ('selection.policy="image+instance"', "selection.target_precision=0.95",
                               "selection.ignore_threshold=0.02")
    # Report.
    vis_images: int = 3
    # Stage budgets in seconds, for the progress/ETA lines and the report (measured on a 2-core CPU, one thread;
    # train_step: a cpu-small step of 4 images in float32 on a 2-core AMD EPYC, 0.14 s there under bfloat16);
    # a training stage's budget is startup + steps x train_step, at most its time limit.
    budgets: dict[str, float] = field(default_factory=lambda: {
        "world": 30, "masks": 20, "poses": 2, "synth_fit": 30, "synth": 20, "synth_heldout": 5, "pretrain": 440,
        "checkout_unlabeled": 2, "render_train": 120, "render_apply": 75, "render_camera": 60, "histogram": 10,
        "render_measure": 20,
        "startup": 5,
        "train_step": 0.22, "predict_per_model": 40, "kd_predict_per_round": 70, "visualize": 15})


QUICK = Recipe(
    workers=1, world_args=("--skus", "10", "--lookalike-pairs", "2", "--azimuths", "4", "--exemplar-size", "160",
                           "--size", "256", "--val", "6", "--test", "6", "--pool", "6"),
    refine_px=160, synth_images=24, heldout_images=6, synth_size=256, render_iters=8, render_crop=48,
    pretrain_steps=20, pretrain_batch=16, source_trunk_steps=12, source_steps=8, kd_steps=8,
    # No pair specialists: a 20-step classifier confuses every pair, and re-scoring every detection with them took
    # the quick demo from 3 min 12 s to about 8 minutes.
    pretrain_specialist_steps=0,
    # A 20-step model rarely scores 0.8: low thresholds so that every round selects and trains.
    kd_set=("selection.policy=\"instance\"", "selection.thresholds=[0.05]", "selection.ignore_threshold=0.05"),
    # The quick world's images are 256 px: train and predict at that size, not the preset's 384.
    dpsnet_set=("train.warmup_steps=5", "train.log_every=10", "data.epoch_size=16", "model.min_size=[256]",
                "model.max_size=256"),
    vis_images=2,
    budgets={"world": 2, "masks": 2, "poses": 1, "synth_fit": 5, "synth": 1, "synth_heldout": 1, "pretrain": 4,
             "checkout_unlabeled": 1, "render_train": 4, "render_apply": 5, "render_camera": 5, "histogram": 1,
             "render_measure": 2,
             "startup": 5,
             "train_step": 0.33, "predict_per_model": 3, "kd_predict_per_round": 1, "visualize": 6},
)

SOURCE_MODELS = (("syn", "Syn", ("synth",)), ("hist", "Syn+histogram", ("synth", "histogram")),
                 ("render", "Syn+Render", ("synth", "render")))


@dataclass(frozen=True)
class Layout:
    """Where every file of a run lives."""

    out: Path
    rpc_root: Path | None = None

    @property
    def world(self) -> Path:
        return self.rpc_root if self.rpc_root is not None else self.out / "world"

    def split(self, name: str) -> tuple[Path, Path]:
        """(instances JSON, image folder) of the world's ``train``, ``val``, ``test`` or ``pool`` split."""
        return self.world / f"instances_{name}2019.json", self.world / f"{name}2019"

    def has_pool(self) -> bool:
        """Whether the data has an unlabeled pool of checkout photos (``pool2019/``), known once the world exists."""
        return all(path.exists() for path in self.split("pool"))

    def pool_truth(self) -> Path | None:
        """The pool's labels (the mini world writes them apart, for measuring the selection only), if any."""
        path = self.world / "pool_truth" / "instances_pool2019.json"
        return path if path.is_file() else None

    def dataset(self, name: str) -> tuple[Path, Path]:
        """(instances JSON, image folder) of a made training set: synth, synth_heldout, histogram, render."""
        if name in ("synth", "synth_heldout"):
            return self.out / name / "instances_synth2019.json", self.out / name / "synth2019"
        return self.out / name / "instances_render2019.json", self.out / name / "render2019"

    def model(self, key: str) -> Path:
        return self.out / "models" / key

    def predictions(self, key: str, split: str) -> tuple[Path, Path]:
        return self.model(key) / f"results_{split}.json", self.model(key) / f"counts_{split}.json"


def check_rpc_root(root: Path) -> None:
    """An RPC-layout folder must hold the three splits; name what is missing and how to fix it."""
    for split in ("train", "val", "test"):
        for path in (root / f"instances_{split}2019.json", root / f"{split}2019"):
            if not path.exists():
                raise InputError(f"--rpc-root {root}: {path.name} not found; expected the RPC layout "
                                 "(train2019/ val2019/ test2019/ and instances_{train,val,test}2019.json)")
        read_instances(root / f"instances_{split}2019.json", require_levels=split != "train")


def link_images(sources: Sequence[Path], dest: Path) -> None:
    """Gather the images of several folders into one (hard links where possible), names prefixed by folder."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for folder in sources:
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() in (".jpg", ".jpeg", ".png"):
                target = tmp / f"{folder.name}_{image.name}"
                try:
                    os.link(image, target)
                except OSError:
                    shutil.copy2(image, target)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # the folder appears whole or not at all


class Pipeline:
    """Builds the stages of a run from a recipe; each stage is one or a few toolkit commands."""

    def __init__(self, recipe: Recipe, layout: Layout):
        self.r, self.p = recipe, layout

    # -- commands -----------------------------------------------------------------------------------------

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

    # -- stages -------------------------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        r, p, b = self.r, self.p, self.r.budgets
        train_json, train_images = p.split("train")
        stages: list[Stage] = []
        if r.rpc_root is None:
            stages.append(Stage("world", "mini world (rpc-synth world)", b["world"],
                                {"seed": r.seed, "args": list(r.world_args)},
                                lambda: self.run([tool("rpc-synth"), "world", "--out", p.world, "--seed", r.seed,
                                                     "--workers", r.workers, "--quiet", *r.world_args])))
        stages += [
            Stage("masks", "exemplar masks (rpc-synth masks)", b["masks"], {"refine_px": r.refine_px},
                  lambda: self.run([tool("rpc-synth"), "masks", "--instances", train_json, "--images", train_images,
                                       "--out", p.out / "masks", "--workers", r.workers, "--refine-px", r.refine_px,
                                       "--quiet"])),
            Stage("poses", "pose pruning (rpc-synth poses)", b["poses"], {},
                  lambda: self.run([tool("rpc-synth"), "poses", "--masks", p.out / "masks" / "instances_masks.json",
                                       "--out", p.out / "poses.json"])),
        ]
        if r.fit_synthesis:
            val_json = p.split("val")[0]
            stages.append(Stage(
                "synth_fit", "synthesis settings fitted to the val split's boxes (rpc-synth fit)", b["synth_fit"],
                {"seed": r.seed, "checkout": "val"},
                lambda: self.run([tool("rpc-synth"), "fit", "--exemplars", p.out / "poses.json", "--images",
                                  train_images, "--checkout", val_json, "--out", p.out / "synthesis.json",
                                  "--seed", r.seed])))
        stages += [
            self.generate_stage("synth", r.synth_images, r.seed, b["synth"]),
            self.generate_stage("synth_heldout", r.heldout_images, r.seed + 1, b["synth_heldout"]),
        ]
        if r.backbone_weights is None and r.pretrain_steps > 0:
            # The product crops of the synthesized images (made from exemplars only) show products as the
            # checkout camera does: rotated, occluded, at checkout scale.
            synth_json, synth_images = p.dataset("synth")
            stages.append(Stage(
                "pretrain", "backbone pretraining on synthesized product crops (dpsnet pretrain)", b["pretrain"],
                {"steps": r.pretrain_steps, "batch": r.pretrain_batch, "seed": r.seed, "crops": "synth",
                 "camera": r.pretrain_camera, "specialist_steps": r.pretrain_specialist_steps},
                lambda: self.run([tool("dpsnet"), "pretrain", "--instances", synth_json, "--images", synth_images,
                                     "--out", self.backbone_weights(), "--steps", r.pretrain_steps,
                                     "--batch-size", r.pretrain_batch, "--camera", r.pretrain_camera,
                                     "--specialist-steps", r.pretrain_specialist_steps, "--seed", r.seed])))
        stages += self.render_stages()
        if r.source_trunk_steps > 0:
            stages.append(self.trunk_stage())
        stages += [self.source_stage(*model) for model in SOURCE_MODELS]
        stages.append(self.kd_stage())
        stages.append(Stage("visualize", "detections and density maps before/after distillation (dpsnet visualize)",
                            b["visualize"], {"images": r.vis_images}, self.visualize))
        if r.controls:
            stages += self.control_stages()
        return stages

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

    def generate_stage(self, name: str, images: int, seed: int, budget: float) -> Stage:
        _, train_images = self.p.split("train")
        size = ["--size", self.r.synth_size] if self.r.synth_size else []
        if self.r.fit_synthesis:
            size += ["--settings", self.p.out / "synthesis.json"]
        return Stage(name, f"synthesized checkout images, {name} ({images}; rpc-synth generate)", budget,
                     {"images": images, "seed": seed, "size": self.r.synth_size, "args": list(self.r.synth_args),
                      "fitted": self.r.fit_synthesis},
                     lambda: self.run([tool("rpc-synth"), "generate", "--exemplars", self.p.out / "poses.json",
                                          "--images", train_images, "--out", self.p.out / name, "--num-images", images,
                                          "--seed", seed, "--workers", self.r.workers, "--quiet", *size,
                                          *self.r.synth_args]))

    def render_stages(self) -> list[Stage]:
        r, p, b = self.r, self.p, self.r.budgets
        synth_json, synth_images = p.dataset("synth")
        target = p.out / "checkout_unlabeled"
        translator = p.out / "render" / "translator.pt"
        # The rendering's target: unlabeled checkout pixels (no label file is read): the pool's photos, or the val
        # and test images when distilling transductively.
        stages = [Stage("checkout_unlabeled", "unlabeled checkout images for rendering (the pool's, or val + test)",
                        b["checkout_unlabeled"], {"transductive": r.transductive},
                        lambda: link_images(self.unlabeled_folders(), target))]
        if r.render_method == "cyclegan":
            stages += [
                Stage("render_train", "translator toward the checkout domain (rpc-synth render train)",
                      b["render_train"], {"iters": r.render_iters, "crop": r.render_crop, "seed": r.seed},
                      lambda: self.run([tool("rpc-synth"), "render", "train", "--source", synth_images,
                                        "--source-ann", synth_json, "--target", target, "--out", translator,
                                        "--iters", r.render_iters, "--size", r.render_crop, "--seed", r.seed,
                                        "--threads", r.threads, "--quiet"])),
                Stage("render_apply", "rendered images (rpc-synth render apply)", b["render_apply"],
                      {"images": r.render_images},
                      lambda: self.run([tool("rpc-synth"), "render", "apply", "--model", translator,
                                        "--images", synth_images, "--ann", self.render_source(), "--out",
                                        p.out / "render", "--threads", r.threads, "--quiet"]))]
        else:
            stages.append(Stage(
                "render_apply", "rendered images, a camera fitted to the checkout photos (rpc-synth render apply "
                "--method camera)", b["render_camera"], {"images": r.render_images, "method": "camera"},
                lambda: self.run([tool("rpc-synth"), "render", "apply", "--method", "camera", "--target", target,
                                  "--images", synth_images, "--ann", self.render_source(), "--out", p.out / "render",
                                  "--quiet"])))
        return [
            *stages,
            Stage("histogram", "histogram-matched images, the baseline (rpc-synth render apply --method histogram)",
                  b["histogram"], {"images": r.render_images},
                  lambda: self.run([tool("rpc-synth"), "render", "apply", "--method", "histogram",
                                    "--target", target, "--images", synth_images, "--ann", self.render_source(),
                                    "--out", p.out / "histogram", "--quiet"])),
            Stage("render_measure", "domain gap, products kept, new blobs (rpc-synth render measure)",
                  b["render_measure"], {"images": r.render_images, "measured": r.measure_images},
                  lambda: self.measure_render(target)),
        ]

    def distils_on_test(self) -> bool:
        """Transductive distillation (the test images are the pool): asked for, or the data has no pool."""
        return self.r.transductive or not self.p.has_pool()

    def unlabeled_folders(self) -> list[Path]:
        if self.distils_on_test():
            return [self.p.split("val")[1], self.p.split("test")[1]]
        return [self.p.split("pool")[1]]

    def measure_render(self, target: Path) -> None:
        """``render/measure.json``: both methods' measures against the checkout pixels (no labels read)."""
        from rpc_synth.render.measure import measure_render

        synth_images = self.p.dataset("synth")[1]
        source = self.first_images(self.render_source(), self.r.measure_images, "instances_measure_subset.json")
        measures = {}
        rendered = "translator" if self.r.render_method == "cyclegan" else "camera"
        for method, folder in (("histogram", "histogram"), (rendered, "render")):
            click.echo(f"  measuring {folder}/render2019 against {target.name}", err=True)
            measures[method] = measure_render(synth_images, source, target, self.p.out / folder / "render2019",
                                              workers=self.r.workers)
        write_json(measures, self.p.out / "render" / "measure.json", indent=2)

    def render_source(self) -> Path:
        """The synthesized set to translate: all of it, or its first ``render_images`` images."""
        return self.first_images(self.p.dataset("synth")[0], self.r.render_images, "instances_render_subset.json")

    def first_images(self, instances: Path, n: int | None, name: str) -> Path:
        """``instances``, or a copy of its first ``n`` images (and their annotations) in ``synth/name``."""
        data = read_instances(instances)
        if n is None or n >= len(data["images"]):
            return instances
        images = data["images"][:n]
        ids = {image["id"] for image in images}
        subset = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
        return write_json(subset, self.p.out / "synth" / name)

    def train(self, run_dir: Path, overrides: Sequence[str]) -> None:
        """`dpsnet train` into ``run_dir``, resuming from its last checkpoint when there is one."""
        resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
        self.run([*self.launcher("dpsnet"), "train", "--config", self.r.preset, "--out", run_dir, *resume,
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
            for split in ("val", "test", "synth_heldout"):
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
        choice = best_source(p, [key for key, _, _ in SOURCE_MODELS])
        names = next(n for k, _, n in SOURCE_MODELS if k == choice)
        overrides = {}
        if r.kd_steps is not None:
            overrides.update({"train.max_steps": r.kd_steps, "train.lr_steps": [0]})
        if r.kd_minutes is not None:
            overrides["train.time_limit_min"] = r.kd_minutes
        if r.kd_lr is not None:
            overrides.update({"train.lr": r.kd_lr, "train.warmup_steps": 20})
        for item in r.dpsnet_set:
            key, _, value = item.partition("=")
            overrides[key] = parse_toml_value(value)
        # kd-loop resolves relative paths against its config's folder: give it absolute ones.
        test_json, test_images, val_json, val_images = (Path(x).resolve() for x in (*p.split("test"), *p.split("val")))
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
            "test": {"instances": str(test_json), "images": str(test_images)},
        }, choice

    def kd_stage(self) -> Stage:
        r = self.r
        per_round = self.train_budget(r.kd_steps, r.kd_minutes) + r.budgets["kd_predict_per_round"]

        def action() -> None:
            config, choice = self.kd_config()
            click.echo(f"  source model for distillation (best cAcc on the val split): {choice}", err=True)
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

    def visualize(self) -> None:
        """Test images (one per level first) with detections and density maps, before and after distillation."""
        p = self.p
        test_json, test_images = p.split("test")
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


def run_pipeline(recipe: Recipe, layout: Layout, *, title: str, until: str | None = None) -> Path | None:
    """Run (or resume) every stage, then write the report; return the report's path. With ``until`` (a stage's
    name), stop after that stage, without a report (None)."""
    layout.out.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(recipe, layout)
    stages = pipeline.stages()
    total = sum(s.budget_s for s in stages)
    click.echo(f"{title}: {len(stages)} stages into {layout.out} (budgets sum to {clock(total)}; "
               "a stage with a record in stages/ is skipped, outputs are written atomically)", err=True)
    records = StageRunner(layout.out, stages).run(until=until)
    if until is not None:
        click.echo(f"stopped after stage '{until}' as asked (--until); run again without it to go on", err=True)
        return None
    report = write_report(layout, recipe, records, [(k, t) for k, t, _ in SOURCE_MODELS], title=title)
    click.echo(f"report: {report}", err=True)
    return report


def overrides_option(name: str, help_text: str):
    return click.option(name, multiple=True, metavar="KEY=VALUE", help=help_text)


def check_overrides(items: Sequence[str], option: str) -> None:
    for item in items:
        if "=" not in item or not item.partition("=")[0].strip():
            raise InputError(f"{option} {item!r}: should look like KEY=VALUE (e.g. train.lr=0.01)")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (default runs/demo, or runs/demo-quick with --quick); an existing run resumes.")
@click.option("--quick", is_flag=True, help="Tiny sizes (a few images, ~20 training steps): under 3 minutes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every stage (same seed, same run).")
@click.option("--workers", type=int, default=None, help="Processes for world, masks and synthesis (default 2; quick 1).")
@click.option("--synth-images", type=int, default=None, help="Synthesized training images (default 800).")
@click.option("--render-iters", type=int, default=None, help="Translator training iterations (default 400).")
@click.option("--source-steps", type=int, default=None,
              help=f"Training steps of each source model (after the trunk; default {Recipe.source_steps}).")
@click.option("--source-trunk-steps", type=click.IntRange(0), default=None,
              help=f"Steps of a shared Syn trunk that each source model fine-tunes (default "
                   f"{Recipe.source_trunk_steps}; 0: none, and --source-steps 740 gives the former recipe).")
@click.option("--source-minutes", type=click.FloatRange(0.0), default=None, help="Time limit of each source model in minutes (default 0: none, the steps decide).")
@click.option("--kd-rounds", type=int, default=None, help="Distillation rounds (default 3).")
@click.option("--kd-steps", type=int, default=None, help=f"Student training steps per round (default {Recipe.kd_steps}).")
@click.option("--kd-minutes", type=click.FloatRange(0.0), default=None, help="Time limit of each student in minutes (default 0: none, the steps decide).")
@click.option("--reclassify-power", type=click.FloatRange(0.0), default=None,
              help="Power of the crop classifier's re-scoring of every prediction (default 2; 0: off).")
@overrides_option("--dpsnet-set", "A dpsnet config override for every training run (repeatable; see `dpsnet config`).")
@overrides_option("--kd-set", "A kd-loop config override (repeatable; see `kd-loop keys`), e.g. selection.min_boxes=2.")
@click.option("--world-args", default="", metavar="ARGS",
              help="More `rpc-synth world` options for the generated world, e.g. \"--gap 2 --density 1.5\" (a variant).")
@click.option("--synth-args", default="", metavar="ARGS",
              help="More `rpc-synth generate` options for the synthesized sets, e.g. \"--scale 0.6,0.8\".")
@click.option("--render-method", type=click.Choice(["camera", "cyclegan"]), default=None,
              help="How Syn+Render's images are rendered: a camera fitted to the checkout photos (default) or the "
                   "CycleGAN-style translator.")
@click.option("--fit-synthesis/--no-fit-synthesis", default=None,
              help="Fit synthesis scale, density and overlap to the val split's boxes (default) or use rpc-synth "
                   "generate's defaults.")
@click.option("--controls", is_flag=True,
              help="Also run the distillation's two same-compute controls (random selection; more steps on synthesized "
                   "data) and compare the last round with them; on a finished run it adds just them.")
@click.option("--transductive", is_flag=True,
              help="Distil on the test images themselves, as the paper does, instead of the unlabeled pool.")
@click.option("--until", metavar="STAGE", default=None,
              help="Stop after this stage (its name as in stages/, e.g. render_measure): the data once, then "
                   "copies of the run (hard links) to try training recipes on.")
def main(out, quick, seed, workers, synth_images, render_iters, source_steps, source_trunk_steps, source_minutes,
         kd_rounds, kd_steps, kd_minutes, reclassify_power, dpsnet_set, kd_set, world_args, synth_args,
         render_method, fit_synthesis, controls, transductive, until) -> None:
    """Run the whole ACO system on the embedded mini world and write a paper-style report."""
    check_overrides(dpsnet_set, "--dpsnet-set")
    check_overrides(kd_set, "--kd-set")
    recipe = QUICK if quick else Recipe()
    given = {"seed": seed, "workers": workers, "synth_images": synth_images, "render_iters": render_iters,
             "source_steps": source_steps, "source_trunk_steps": source_trunk_steps, "source_minutes": source_minutes,
             "kd_rounds": kd_rounds, "kd_steps": kd_steps, "kd_minutes": kd_minutes,
             "reclassify_power": reclassify_power, "transductive": transductive or None, "controls": controls or None,
             "fit_synthesis": fit_synthesis, "render_method": render_method}
    recipe = replace(recipe, **{k: v for k, v in given.items() if v is not None},
                     dpsnet_set=recipe.dpsnet_set + dpsnet_set, kd_set=recipe.kd_set + kd_set,
                     world_args=recipe.world_args + tuple(shlex.split(world_args)),
                     synth_args=recipe.synth_args + tuple(shlex.split(synth_args)))
    out = out or Path("runs/demo-quick" if quick else "runs/demo")
    report = run_pipeline(recipe, Layout(out.resolve()), title="ACO demo on the mini world" + (" (quick)" if quick else ""),
                          until=until)
    if report is not None:
        click.echo(report.read_text(encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
