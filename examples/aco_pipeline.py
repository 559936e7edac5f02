"""The whole ACO system on the embedded mini world (called by `make demo`), every stage resumable.

mini world -> masks -> pose pruning -> synthesis fitted to the val boxes (train + held-out sets) -> backbone
pretraining on synthesized product crops -> rendering toward the checkout domain (a fitted camera; histogram
matching as the baseline) -> three DPSNet source models (Syn, Syn+histogram, Syn+Render; the same budget each)
-> kd-loop rounds from the best one (chosen on val) over the unlabeled pool -> evaluation of every stage with
rpc-metrics -> report (aco_report.py). The recipe is in aco_recipe.py, the model stages in aco_training.py.

Every stage runs the toolkit's own command line (`rpc-synth`, `dpsnet`, `kd-loop`), so the presets and their
changes apply as they are. A stage whose record exists in OUT/stages/ is skipped; see aco_stages.py.
`rpc_paper.py` runs the same flow on the real RPC files.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import click
from aco_recipe import QUICK, SOURCE_MODELS, Layout, Recipe, check_rpc_root
from aco_report import write_report
from aco_stages import InputError, Stage, StageRunner, clock, tool
from aco_training import ModelStages
from aco_unlabeled import write_unlabeled_report

from rpc_metrics.io import read_instances, write_json
from rpc_metrics.toml import parse_override

__all__ = ["QUICK", "SOURCE_MODELS", "Layout", "Pipeline", "Recipe", "check_rpc_root", "run_pipeline"]


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


class Pipeline(ModelStages):
    """Builds the stages of a run from a recipe: the data stages here, the model stages in ModelStages."""

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
        if p.checkout is not None:
            stages.append(Stage("checkout_pool", f"the unlabeled checkout photos of {p.checkout} as the pool",
                                b["checkout_unlabeled"], {"checkout": str(p.checkout)}, self.index_checkout))
        unlabeled = self.unlabeled_stage()
        if r.fit_synthesis:
            stages += self.fit_stages(unlabeled)
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
        stages.append(self.bundle_stage())
        if r.controls:
            stages += self.control_stages()
        return stages

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
        stages = [] if r.fit_synthesis else [self.unlabeled_stage()]
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

    def unlabeled_stage(self) -> Stage:
        """The unlabeled checkout images that rendering (and, without val, synthesis) is fitted to."""
        return Stage("checkout_unlabeled", "unlabeled checkout images (the pool's, or val + test)",
                     self.r.budgets["checkout_unlabeled"], {"transductive": self.r.transductive},
                     lambda: self.link_unlabeled(self.p.out / "checkout_unlabeled"))

    def fit_stages(self, unlabeled: Stage) -> list[Stage]:
        """``rpc-synth fit``: to the val split's boxes, or (no val split) to the unlabeled checkout photos."""
        r, p = self.r, self.p
        fit = [tool("rpc-synth"), "fit", "--exemplars", p.out / "poses.json", "--images", p.split("train")[1],
               "--out", p.out / "synthesis.json", "--seed", r.seed]
        if p.has_split("val"):
            return [unlabeled, Stage("synth_fit", "synthesis settings fitted to the val split's boxes (rpc-synth fit)",
                                     r.budgets["synth_fit"], {"seed": r.seed, "checkout": "val"},
                                     lambda: self.run([*fit, "--checkout", p.split("val")[0]]))]
        return [unlabeled, Stage(
            "synth_fit", "synthesis settings estimated from the unlabeled checkout photos (rpc-synth fit)",
            r.budgets["synth_fit"], {"seed": r.seed, "checkout": "unlabeled"},
            lambda: self.run([*fit, "--checkout-images", p.out / "checkout_unlabeled"]))]

    def index_checkout(self) -> None:
        """``pool/instances_pool2019.json``: the photos of ``checkout`` as a pool (ids, names, sizes; no labels)."""
        from rpc_metrics.images import image_size
        from rpc_synth.image_files import folder_images

        folder = self.p.checkout
        photos = folder_images(folder, "--checkout")
        if not photos:
            raise InputError(f"--checkout {folder}: no .jpg or .png photos found")
        images = []
        for i, path in enumerate(photos, 1):
            size = image_size(path)
            if size is None:
                raise InputError(f"--checkout {path}: not a PNG or JPEG photo; convert it or remove it")
            images.append({"id": i, "file_name": path.name, "width": size[0], "height": size[1]})
        categories = read_instances(self.p.split("train")[0])["categories"]
        write_json({"images": images, "annotations": [], "categories": categories}, self.p.split("pool")[0])

    def distils_on_test(self) -> bool:
        """Transductive distillation (the test images are the pool): asked for, or the data has no pool."""
        return self.r.transductive or not self.p.has_pool()

    def unlabeled_folders(self) -> list[Path]:
        if self.distils_on_test():
            return [self.p.split(s)[1] for s in ("val", "test") if self.p.has_split(s)]
        return [self.p.split("pool")[1]]

    def link_unlabeled(self, target: Path) -> None:
        """Gather the unlabeled checkout images the rendering is fitted to into ``target``."""
        link_images(self.unlabeled_folders(), target)

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
    # Without test labels, the report of what can be shown without them (no accuracy rows).
    write = write_report if layout.has_split("test") else write_unlabeled_report
    report = write(layout, recipe, records, [(k, t) for k, t, _ in SOURCE_MODELS], title=title)
    click.echo(f"report: {report}", err=True)
    return report


def overrides_option(name: str, help_text: str):
    return click.option(name, multiple=True, metavar="KEY=VALUE", help=help_text)


def check_overrides(items: Sequence[str], option: str) -> None:
    for item in items:
        try:
            parse_override(item)
        except ValueError:
            raise InputError(f"{option} {item!r}: should look like KEY=VALUE (e.g. train.lr=0.01)") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (default runs/mini, or runs/mini-quick with --quick); an existing run resumes.")
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
@click.option("--rpc-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run on an RPC-layout folder (train2019/ + instances_train2019.json; val and test optional) instead "
                   "of the mini world, e.g. one made by `rpc-synth catalog` from a store's product photos.")
@click.option("--checkout", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder of unlabeled checkout photos: the distillation pool (and, without val, what synthesis "
                   "and rendering are fitted to). With --rpc-root.")
@click.option("--until", metavar="STAGE", default=None,
              help="Stop after this stage (its name as in stages/, e.g. render_measure): the data once, then "
                   "copies of the run (hard links) to try training recipes on.")
def main(out, quick, seed, workers, synth_images, render_iters, source_steps, source_trunk_steps, source_minutes,
         kd_rounds, kd_steps, kd_minutes, reclassify_power, dpsnet_set, kd_set, world_args, synth_args,
         render_method, fit_synthesis, controls, transductive, rpc_root, checkout, until) -> None:
    """Run the whole ACO system on the embedded mini world (or an RPC-layout folder) and write a report."""
    check_overrides(dpsnet_set, "--dpsnet-set")
    check_overrides(kd_set, "--kd-set")
    if checkout is not None and rpc_root is None:
        raise InputError("--checkout goes with --rpc-root (the mini world has its own unlabeled pool)")
    if rpc_root is not None:
        check_rpc_root(rpc_root, checkout)
        if world_args:
            raise InputError("--world-args: only for the mini world, not with --rpc-root")
        for flag, name in ((controls, "--controls"), (transductive, "--transductive")):
            if flag and not (rpc_root / "instances_test2019.json").exists():
                raise InputError(f"{name}: needs a test split, and this --rpc-root has none")
    recipe = QUICK if quick else Recipe()
    given = {"seed": seed, "workers": workers, "synth_images": synth_images, "render_iters": render_iters,
             "source_steps": source_steps, "source_trunk_steps": source_trunk_steps, "source_minutes": source_minutes,
             "kd_rounds": kd_rounds, "kd_steps": kd_steps, "kd_minutes": kd_minutes,
             "reclassify_power": reclassify_power, "transductive": transductive or None, "controls": controls or None,
             "fit_synthesis": fit_synthesis, "render_method": render_method,
             "rpc_root": rpc_root.resolve() if rpc_root else None}
    recipe = replace(recipe, **{k: v for k, v in given.items() if v is not None},
                     dpsnet_set=recipe.dpsnet_set + dpsnet_set, kd_set=recipe.kd_set + kd_set,
                     world_args=recipe.world_args + tuple(shlex.split(world_args)),
                     synth_args=recipe.synth_args + tuple(shlex.split(synth_args)))
    out = out or Path("runs/mini-quick" if quick else "runs/mini")
    layout = Layout(out.resolve(), rpc_root=recipe.rpc_root, checkout=checkout.resolve() if checkout else None)
    title = f"ACO pipeline on {rpc_root}" if rpc_root else "ACO demo on the mini world"
    report = run_pipeline(recipe, layout, title=title + (" (quick)" if quick else ""), until=until)
    if report is not None:
        click.echo(report.read_text(encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
