"""``rpc-synth``: a thin click layer over the library functions (same arguments, same names)."""

from __future__ import annotations

import json
from typing import Any

import click

from rpc_metrics.cliargs import (
    MAX_IMAGE_SIDE,
    MAX_IMAGES,
    MAX_ITERATIONS,
    SEED,
    THREADS,
    WORKERS,
    NumberList,
    OutputPath,
    ToolGroup,
)
from rpc_metrics.cliargs import FiniteFloat as Finite
from rpc_metrics.version import version_option

from . import world as world_mod
from .clean_exit import fail_cleanly as _fail_cleanly
from .generate import InputError


@click.group(cls=ToolGroup, error_prefix="rpc-synth: error: ",
             context_settings={"help_option_names": ["-h", "--help"]})
@version_option("rpc-synth")
def main() -> None:
    """Synthesized checkout images from single-product exemplars, and an embedded mini RPC world."""


def _world_option(flag: str, kind: Any, help: str, field: str | None = None):
    """An option of ``rpc-synth world`` for :class:`~rpc_synth.world.WorldConfig`'s ``field`` (by default the
    flag's name), its default the config's own (one home for the world's defaults)."""
    field = field or flag.removeprefix("--").replace("-", "_")
    default = getattr(world_mod.WorldConfig, field)
    return click.option(flag, field, type=kind, default=default, show_default=default is not None, help=help)


@main.command()
@click.option("--out", required=True, type=OutputPath(folder=True), help="Folder to write the world into (RPC layout).")
@_world_option("--seed", SEED, "Random seed; the same seed gives the same bytes.")
@_world_option("--style", click.Choice(world_mod.STYLES),
               "Checkout domain: 'gap' (camera above a woven tray, products lying and piled, shop light) or "
               "'legacy' (the earlier releases' world, for comparison).")
@_world_option("--gap", Finite(0.0, 3.0),
               "Strength of the checkout camera's photometric gap (gap style; 0: mild, 2: strong).")
@_world_option("--density", Finite(0.25, 3.0),
               "How densely products pile (gap style): box overlap allowed 0.3 x this, gathered to the centre.")
@_world_option("--product-size", Finite(0.02, 0.6),
               "Checkout product scale: px per world unit as a fraction of the image side (default: gap 0.26, "
               "legacy 0.2).")
@_world_option("--lying", Finite(0.0, 1.0), "Share of checkout products lying on a side (gap style).")
@_world_option("--standing", Finite(0.0, 1.0),
               "Share of checkout products standing, seen from the top (gap style).")
@_world_option("--skus", click.IntRange(10, 1000), "Number of products (at least 10).")
@_world_option("--lookalike-pairs", click.IntRange(0, 500), "Pairs of SKUs that differ only in small details.")
@click.option("--elevations", type=NumberList(Finite(0.0, 90.0), example="0,30,60,90"),
              default=",".join(f"{e:g}" for e in world_mod.WorldConfig.elevations), show_default=True,
              help="Exemplar camera elevations in degrees in [0, 90], comma-separated.")
@_world_option("--azimuths", click.IntRange(1, 360), "Turntable rotations per elevation.")
@_world_option("--exemplar-size", click.IntRange(64, 4096), "Exemplar width in px (height is 3/4 of it).")
@_world_option("--turntable", click.Choice(world_mod.TURNTABLES),
               "Exemplar background: 'plain' (RPC's turntable) or 'textured' (wood-like grain, vignetting and the "
               "product's cast shadow: a harder catalogue for `rpc-synth catalog`).")
@_world_option("--size", click.IntRange(64, 4096), "Checkout image side in px (RPC: about 1815).", "checkout_size")
@_world_option("--val", click.IntRange(0, MAX_IMAGES), "Number of val checkout images (equal thirds per level).", "val_images")
@_world_option("--test", click.IntRange(0, MAX_IMAGES), "Number of test checkout images (equal thirds per level).", "test_images")
@_world_option("--pool", click.IntRange(0, MAX_IMAGES),
               "Number of unlabeled checkout photos (pool2019/, the distillation pool; labels in pool_truth/).",
               "pool_images")
@click.option("--workers", type=WORKERS, default=1, show_default=True, help="Worker processes.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@_fail_cleanly
def world(out, seed, style, gap, density, product_size, lying, standing, skus, lookalike_pairs, elevations, azimuths,
          exemplar_size, turntable, checkout_size, val_images, test_images, pool_images, workers, quiet):
    """Write the procedural mini world (exemplars, val/test checkout images, an unlabeled pool, true masks)."""
    config = world_mod.WorldConfig(seed=seed, style=style, gap=gap, density=density, product_size=product_size,
                                   lying=lying, standing=standing, skus=skus, lookalike_pairs=lookalike_pairs,
                                   elevations=tuple(elevations), azimuths=azimuths, exemplar_size=exemplar_size, turntable=turntable,
                                   checkout_size=checkout_size, val_images=val_images, test_images=test_images,
                                   pool_images=pool_images)
    summary = world_mod.build_world(out, config, workers=workers, progress=not quiet)
    click.echo(f"wrote {summary['exemplars']} exemplars, {val_images} val, {test_images} test and {pool_images} "
               f"unlabeled pool checkout images ({style} style) to {out}")


@main.command()
@click.option("--instances", required=True, type=click.Path(dir_okay=False), help="Exemplar instances JSON (RPC train).")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Folder of the exemplar photos.")
@click.option("--out", required=True, type=OutputPath(folder=True), help="Folder for mask PNGs and instances_masks.json.")
@click.option("--workers", type=WORKERS, default=1, show_default=True, help="Worker processes.")
@click.option("--keep-coarse", is_flag=True, help="Also write the coarse masks to OUT/coarse/ (to compare).")
@click.option("--refine-px", type=click.IntRange(32, MAX_IMAGE_SIDE), default=400, show_default=True,
              help="Largest side the GrabCut refinement works at (at least 32).")
@click.option("--quiet", is_flag=True, help="No progress line.")
@_fail_cleanly(resumable=True)
def masks(instances, images, out, workers, keep_coarse, refine_px, quiet):
    """Coarse-to-fine product masks for every exemplar (resumable: finished images are skipped)."""
    from .masks import build_masks

    result = build_masks(instances, images, out, workers=workers, keep_coarse=keep_coarse, refine_px=refine_px,
                         progress=not quiet)
    scores = [a["mask_score"] for a in result["annotations"] if "mask_score" in a]
    click.echo(f"wrote {len(scores)} masks to {out} (mean quality score {sum(scores) / max(len(scores), 1):.3f})")


@main.command()
@click.option("--masks", "masks_json", required=True, type=click.Path(dir_okay=False), help="instances_masks.json from `rpc-synth masks`.")
@click.option("--out", required=True, type=OutputPath(), help="Where to write the JSON with pose_ratio and pose_kept.")
@click.option("--threshold", type=Finite(0.0, 1.0), default=0.45, show_default=True, help="Keep a view when its area ratio is above this.")
@_fail_cleanly
def poses(masks_json, out, threshold):
    """Pose pruning: keep views whose mask area is above THRESHOLD x the SKU's largest."""
    from .poses import pose_summary, prune_poses

    summary = pose_summary(prune_poses(masks_json, out, threshold=threshold))
    click.echo(f"kept {summary['kept']} of {summary['views']} views, dropped {summary['dropped']}; wrote {out}")
    if summary["categories_without_views"]:
        click.echo(f"warning: no view kept for categories {summary['categories_without_views']}", err=True)


@main.command()
@click.option("--world", "world_dir", required=True, type=click.Path(file_okay=False), help="Mini world folder (has exemplar_masks_true/).")
@click.option("--masks", "masks_dir", required=True, type=click.Path(file_okay=False), help="Output folder of `rpc-synth masks`.")
@click.option("--poses", "poses_json", type=click.Path(dir_okay=False), help="Output JSON of `rpc-synth poses`.")
@_fail_cleanly
def quality(world_dir, masks_dir, poses_json):
    """Measure masks (mean IoU vs the true masks) and pose pruning on the mini world; prints JSON."""
    from .quality import mask_quality, pose_quality

    report = {"masks": mask_quality(world_dir, masks_dir)}
    if poses_json:
        report["poses"] = pose_quality(world_dir, poses_json)
    click.echo(json.dumps(report, indent=1))


# Relative to size / exemplar width: at 10 a product filling a tenth of its photo's width spans the whole image.
SCALE = NumberList(Finite(0.0, 10.0, lo_open=True), count=2, order="<=", example="0.5,0.7")


@main.command()
@click.option("--exemplars", required=True, type=click.Path(dir_okay=False), help="poses.json (or instances_masks.json) of the exemplars.")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Folder of the exemplar photos.")
@click.option("--out", required=True, type=OutputPath(folder=True), help="Output folder (synth2019/, instances_synth2019.json).")
@click.option("--num-images", "n_images", type=click.IntRange(1, MAX_IMAGES), default=600, show_default=True, help="Number of images to synthesize.")
@click.option("--size", type=click.IntRange(64, 4096), default=384, show_default=True, help="Side of the square output images in px (RPC: about 1815).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed; image i depends only on (seed, i).")
@click.option("--levels", default="easy,medium,hard", show_default=True, help="Levels cycled over the images (equal shares).")
@click.option("--ranges", default="", help="Override per-level ranges, e.g. 'easy=3-5/3-10' (categories/instances).")
@click.option("--categories", default="", help="Comma-separated category ids to use (default: all with a kept exemplar).")
@click.option("--scale", type=SCALE, default="0.5,0.7", show_default=True, help="Object scale range, relative to size / exemplar width.")
@click.option("--max-iou", type=Finite(0.0, 1.0), default=0.3, show_default=True, help="Placement limit on box IoU (relaxed when crowded).")
@click.option("--min-visible", type=Finite(0.0, 1.0, hi_open=True), default=0.3, show_default=True, help="Drop instances with less of their mask visible.")
@click.option("--shadow-strength", type=Finite(0.0, 1.0), default=0.4, show_default=True, help="Darkness of the soft shadows (0: none).")
@click.option("--squash", type=Finite(0.0, 1.0), default=0.0, show_default=True,
              help="Share of instances foreshortened (views the exemplars lack; 0: off).")
@click.option("--squash-min", type=Finite(0.0, 1.0, lo_open=True), default=0.3, show_default=True,
              help="Smallest foreshortening factor.")
@click.option("--squash-axis", type=click.Choice(["y", "x"]), default="y", show_default=True,
              help="Axis of the exemplar image to foreshorten: y, a steeper camera; x, the product turned.")
@click.option("--color-jitter", type=Finite(0.0, 1.0, hi_open=True), default=0.1, show_default=True, help="Per-object colour gain jitter (0: none).")
@click.option("--backgrounds", type=click.Path(file_okay=False, exists=True), help="Folder of background photos (default: procedural).")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=90, show_default=True, help="JPEG quality of the written images.")
@click.option("--workers", type=WORKERS, default=1, show_default=True, help="Worker processes (output does not depend on it).")
@click.option("--shard", default=None, help="Make only images with index % n == i, given as i/n.")
@click.option("--settings", type=click.Path(dir_okay=False),
              help="Settings JSON of `rpc-synth fit` (size, levels, ranges, scale, max_iou); options given here win.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@_fail_cleanly(resumable=True)
def generate(exemplars, images, out, n_images, size, seed, levels, ranges, categories, scale, max_iou, min_visible,
             shadow_strength, squash, squash_min, squash_axis, color_jitter, backgrounds, jpeg_quality, workers, shard,
             settings, quiet):
    """Synthesize checkout images (resumable: re-running skips finished images)."""
    from .generate import GenerateConfig
    from .generate import generate as run_generate

    try:
        category_ids = tuple(int(c) for c in categories.split(",") if c.strip())
    except ValueError:
        raise InputError(f"--categories should be comma-separated integers, got {categories!r}") from None
    fields = dict(images=n_images, size=size, seed=seed, levels=tuple(v.strip() for v in levels.split(",")),
                  ranges=ranges, categories=category_ids, scale=scale, max_iou=max_iou,
                  min_visible=min_visible, shadow_strength=shadow_strength, color_jitter=color_jitter,
                  backgrounds=backgrounds, jpeg_quality=jpeg_quality, squash=squash, squash_min=squash_min,
                  squash_axis=squash_axis)
    if settings:  # precedence: the options' defaults < the settings file < options given on the command line
        from click.core import ParameterSource

        from .fit import read_settings

        ctx = click.get_current_context()
        given = {"images" if name == "n_images" else name for name in ctx.params
                 if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
        fields.update({k: v for k, v in read_settings(settings).items() if k not in given})
    config = GenerateConfig(**fields)
    dataset = run_generate(exemplars, images, out, config, workers=workers, shard=shard, progress=not quiet)
    if dataset is not None:
        click.echo(f"wrote {len(dataset['images'])} images, {len(dataset['annotations'])} instances to {out}")


# A loss weight: 0 switches the term off; the defaults are 1 to 10, so 1000 is a typo.
WEIGHT = Finite(0.0, 1000.0)


@main.group()
def render() -> None:
    """Translate synthesized images toward the checkout domain (cyclegan translator, fitted camera, histogram matching)."""


@render.command("train")
@click.option("--source", required=True, type=click.Path(file_okay=False), help="Folder of synthesized images.")
@click.option("--source-ann", required=True, type=click.Path(dir_okay=False), help="Their instances JSON (RLE masks from `generate`).")
@click.option("--target", required=True, type=click.Path(file_okay=False), help="Folder of unlabeled checkout images (labels never read).")
@click.option("--out", required=True, type=OutputPath(), help="Checkpoint file to write (resumed when it exists).")
@click.option("--size", type=click.IntRange(16, 4096), default=96, show_default=True, help="Side of the random training crops in px.")
@click.option("--iters", type=click.IntRange(1, MAX_ITERATIONS), default=500, show_default=True, help="Training iterations (more than the checkpoint's: train on).")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Crops per iteration from each domain.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed (model init and crop order).")
@click.option("--gen-channels", type=click.IntRange(1, 1024), default=16, show_default=True, help="Generator width after its first layer.")
@click.option("--gen-blocks", type=click.IntRange(0, 64), default=4, show_default=True, help="Residual blocks in the generator.")
@click.option("--disc-channels", type=click.IntRange(1, 1024), default=32, show_default=True, help="Discriminator width of its first layer.")
@click.option("--preserve-weight", type=WEIGHT, default=10.0, show_default=True, help="Weight of the product-preservation loss (0: plain CycleGAN).")
@click.option("--background-weight", type=WEIGHT, default=2.0, show_default=True, help="Weight of that loss's edge term on the tray, against painted blobs.")
@click.option("--colour-weight", type=WEIGHT, default=1.0, show_default=True, help="Weight of that loss's product-colour term, against repainting.")
@click.option("--cycle-weight", type=WEIGHT, default=10.0, show_default=True, help="Weight of the cycle-consistency loss.")
@click.option("--identity-weight", type=WEIGHT, default=2.0, show_default=True, help="Weight of the identity loss (0: skip it).")
@click.option("--lr", type=Finite(0.0, 1.0, lo_open=True), default=2e-4, show_default=True, help="Adam learning rate (CycleGAN's; 5e-4 was unstable here).")
@click.option("--prematch/--no-prematch", default=True, show_default=True,
              help="Histogram-match the source images to the target first; the translator learns what matching cannot.")
@click.option("--noise/--no-noise", default=True, show_default=True,
              help="Noise injection in the generators, for sensor noise.")
@click.option("--noise-init", type=Finite(0.0, 255.0), default=2.0, show_default=True,
              help="Noise level, grey levels (the starting level with --learn-noise).")
@click.option("--learn-noise/--fixed-noise", default=False, show_default=True,
              help="Learn the noise level (the adversarial loss drove it down to 0.1-0.5 grey levels here).")
@click.option("--checkpoint-every", type=click.IntRange(1, MAX_ITERATIONS), default=100, show_default=True, help="Iterations between checkpoints.")
@click.option("--threads", type=THREADS, default=1, show_default=True, help="CPU threads for torch (0: torch's default).")
@click.option("--device", default="auto", show_default=True, help="auto (a CUDA GPU when there is one), cpu or cuda[:N].")
@click.option("--quiet", is_flag=True, help="No progress line.")
@_fail_cleanly(resumable=True)
def render_train(source, source_ann, target, out, size, iters, batch, seed, gen_channels, gen_blocks, disc_channels,
                 preserve_weight, background_weight, colour_weight, cycle_weight, identity_weight, lr, prematch, noise,
                 noise_init, learn_noise, checkpoint_every, threads, device, quiet):
    """Train the synthesized -> checkout translator on unpaired random crops (resumable)."""
    from .render import require_torch

    require_torch()
    from .render.train import TranslatorConfig, train_translator

    config = TranslatorConfig(size=size, iters=iters, batch=batch, seed=seed, gen_channels=gen_channels,
                              gen_blocks=gen_blocks, disc_channels=disc_channels, preserve_weight=preserve_weight,
                              background_weight=background_weight, colour_weight=colour_weight,
                              cycle_weight=cycle_weight, identity_weight=identity_weight, lr=lr,
                              prematch=prematch, noise=noise, noise_init=noise_init, noise_learned=learn_noise,
                              checkpoint_every=checkpoint_every)
    result = train_translator(source, source_ann, target, out, config, threads=threads or None, device=device,
                              progress=not quiet)
    click.echo(f"trained to iteration {result['iteration']}; wrote {out}")


@render.command("apply")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Folder of the images to translate.")
@click.option("--ann", required=True, type=click.Path(dir_okay=False), help="Their instances JSON (copied, boxes unchanged).")
@click.option("--out", required=True, type=OutputPath(folder=True), help="Output folder (render2019/, instances_render2019.json).")
@click.option("--method", type=click.Choice(["cyclegan", "camera", "histogram"]), default="cyclegan", show_default=True,
              help="Translator checkpoint; a camera (histogram matching, blur, noise, JPEG) fitted to the target "
                   "photos; or per-channel histogram matching alone (camera and histogram need no torch).")
@click.option("--model", type=click.Path(dir_okay=False), help="Checkpoint of `render train` (cyclegan).")
@click.option("--target", type=click.Path(file_okay=False),
              help="Folder of checkout images to match (camera, histogram; pixels only).")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality of the written images.")
@click.option("--threads", type=THREADS, default=1, show_default=True, help="CPU threads for torch (0: torch's default).")
@click.option("--amp/--no-amp", default=None,
              help="The translator under bfloat16 autocast (default: where the CPU computes bfloat16 natively, "
                   "Intel AMX or AVX512-BF16, and on a GPU; about 1.4x faster on such a CPU, within a grey level of float32).")
@click.option("--device", default="auto", show_default=True,
              help="Where the translator runs: auto (a CUDA GPU when there is one), cpu or cuda[:N].")
@click.option("--quiet", is_flag=True, help="No progress line.")
@_fail_cleanly
def render_apply(images, ann, out, method, model, target, jpeg_quality, threads, amp, device, quiet):
    """Translate a dataset's images and write them with a copy of its annotations."""
    from .render.apply import render_dataset

    dataset = render_dataset(images, ann, out, method=method, model=model, target=target, jpeg_quality=jpeg_quality,
                             threads=threads or None, amp=amp, device=device, progress=not quiet)
    click.echo(f"wrote {len(dataset['images'])} {method} images and their annotations to {out}")


@render.command("measure")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Folder of the synthesized images.")
@click.option("--ann", required=True, type=click.Path(dir_okay=False), help="Their instances JSON.")
@click.option("--target", required=True, type=click.Path(file_okay=False), help="Folder of checkout images (the domain aimed at).")
@click.option("--rendered", type=click.Path(file_okay=False), help="Folder of the same images translated (`apply`'s render2019/).")
@click.option("--iou-threshold", type=Finite(0.0, 1.0), default=0.5, show_default=True, help="A product is kept when its foreground IoU reaches this.")
@click.option("--min-crispness", type=Finite(0.0, 10.0), default=0.15, show_default=True,
              help="A new foreground region is a product-like blob when its boundary gradient / its contrast reaches this (a step edge: ~0.3).")
@click.option("--workers", type=WORKERS, default=1, show_default=True, help="Worker processes (output does not depend on it).")
@_fail_cleanly
def render_measure(images, ann, target, rendered, iou_threshold, min_crispness, workers):
    """Domain gap to the checkout images; with --rendered also products kept and new blobs. Prints JSON."""
    from .render.measure import measure_render

    click.echo(json.dumps(measure_render(images, ann, target, rendered, iou_threshold=iou_threshold,
                                         min_crispness=min_crispness, workers=workers), indent=1))


@main.command()
@click.option("--exemplars", required=True, type=click.Path(dir_okay=False), help="poses.json (or instances_masks.json) of the exemplars.")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Folder of the exemplar photos.")
@click.option("--checkout", type=click.Path(dir_okay=False),
              help="Labelled checkout split to match (RPC val/test instances JSON).")
@click.option("--checkout-images", type=click.Path(file_okay=False),
              help="Or a folder of unlabeled checkout photos: product size and count estimated from the pixels.")
@click.option("--out", required=True, type=OutputPath(), help="Settings JSON to write (for `generate --settings`).")
@click.option("--probe-images", type=click.IntRange(3, 10_000), default=48, show_default=True,
              help="Images per simulated probe set (more: steadier, slower).")
@click.option("--max-checkout-images", type=click.IntRange(1, MAX_IMAGES), default=200, show_default=True,
              help="Unlabeled photos used at most (evenly spread over the file names).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed of the probe sets; the same seed gives the same file.")
@_fail_cleanly
def fit(exemplars, images, checkout, checkout_images, out, probe_images, max_checkout_images, seed):
    """Fit synthesis size, products per tray, scale and overlap to the checkout images; writes a settings JSON."""
    from rpc_metrics.io import write_json

    from .fit import fit_generate_config, settings_document
    from .unlabeled import unlabeled_stats

    if (checkout is None) == (checkout_images is None):
        raise InputError("pass exactly one of --checkout (a labelled instances JSON) or --checkout-images (a folder)")
    target = checkout if checkout else unlabeled_stats(checkout_images, max_images=max_checkout_images)
    config, report = fit_generate_config(exemplars, images, target, probe_images=probe_images, seed=seed)
    write_json(settings_document(config, report), out, indent=1)
    click.echo(f"wrote {out}: size {config.size}, ranges {config.ranges}, scale {config.scale[0]:.3f}-"
               f"{config.scale[1]:.3f}, max_iou {config.max_iou}")
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.option("--catalog", "catalog_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of SKU folders of photos (CATALOG/<sku name>/*.jpg|jpeg|png); optional CATALOG/skus.csv "
                   "(name,supercategory).")
@click.option("--out", required=True, type=OutputPath(folder=True),
              help="Output folder (train2019/, instances_train2019.json, sku_ids.json, catalog_report.json).")
@click.option("--workers", type=WORKERS, default=1, show_default=True, help="Worker processes (output does not depend on it).")
@click.option("--refine-px", type=click.IntRange(32, MAX_IMAGE_SIDE), default=400, show_default=True,
              help="Largest side the GrabCut refinement works at (at least 32).")
@click.option("--supercategory", default="product", show_default=True, help="Supercategory of SKUs skus.csv does not list.")
@click.option("--shadows", is_flag=True,
              help="Cut cast shadows off the masks (photos with shadows; may also cut grey parts of products).")
@click.option("--allow-removed", is_flag=True,
              help="Accept SKUs of OUT/sku_ids.json that have no folder any more (their ids are retired, never reused).")
@click.option("--quiet", is_flag=True, help="No progress line.")
@_fail_cleanly
def catalog(catalog_dir, out, workers, refine_px, supercategory, shadows, allow_removed, quiet):
    """A store's own product photos as RPC exemplars: one box per photo from its product mask, stable category ids."""
    from .catalog import REPORT, build_catalog

    report = build_catalog(catalog_dir, out, workers=workers, refine_px=refine_px, allow_removed=allow_removed,
                           supercategory=supercategory, shadows=shadows, progress=not quiet)
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if report["no_product"]:
        files = ", ".join(r["file"] for r in report["no_product"])
        click.echo(f"rpc-synth catalog: no product found in {len(report['no_product'])} photo(s), left out (reasons "
                   f"in {out}/{REPORT}): {files}", err=True)
    if report["skus_without_boxes"]:
        click.echo(f"warning: SKUs with no boxed photo: {', '.join(report['skus_without_boxes'])}", err=True)
    click.echo(f"wrote {report['boxed']} exemplars of {report['skus']} SKUs to {out}")
