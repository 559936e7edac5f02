"""``dpsnet`` command line: a thin click layer over :mod:`dpsnet.training`, :mod:`dpsnet.inference`, rpc-metrics.

Bad input (missing files, bad config keys or values, malformed JSON) prints one line naming the problem and
exits with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from rpc_metrics import evaluate
from rpc_metrics.cliargs import (
    MAX_IMAGES,
    MAX_ITERATIONS,
    SEED,
    FiniteFloat,
    NumberList,
    OutputPath,
    ToolGroup,
    output_problem,
)
from rpc_metrics.io import FormatError, read_counts, write_json
from rpc_metrics.version import version_option

from .config import PRESETS, ConfigError, describe, make_config
from .config.ranges import DEVICE_HELP, device_problem

# The files of a run folder (train writes config.toml first): any of them means the folder holds a run.
RUN_FILES = ("config.toml", "last.pt", "best.pt", "log.jsonl", "log.txt", "results.csv")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(2)


def _run(fn, *args, **kwargs):
    """Call ``fn``; input problems become one-line errors with exit status 2."""
    try:
        return fn(*args, **kwargs)
    except (FileNotFoundError, FormatError, ConfigError) as err:
        _fail(str(err))
    except ValueError as err:  # bad option or config value, named in the message
        _fail(str(err))
    except RecursionError:  # a JSON or TOML input nested deeper than any toolkit file
        _fail("an input file is nested too deeply to be a toolkit file; check the paths given")
    except FloatingPointError as err:  # a training run that diverged: not an input error, but one line too
        click.echo(f"error: {err}", err=True)
        raise SystemExit(1) from None


class DeviceType(click.ParamType):
    """A device name (:func:`dpsnet.config.ranges.device_problem`), refused at parse time naming the option."""

    name = "device"

    def convert(self, value, param, ctx):
        problem = device_problem(value)
        if problem:
            self.fail(problem, param, ctx)
        return value.strip()


DEVICE = DeviceType()
SCORE = FiniteFloat(0.0, 1.0)
BATCH = click.IntRange(1, 4096)
# score x p(SKU) ** power: 0 ignores the classifier; at 10 a p of 0.9 already takes a third off the score.
POWER = FiniteFloat(0.0, 10.0)


@click.group(cls=ToolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("dpsnet")
def main() -> None:
    """DPSNet for Automatic Check-Out: train, predict, evaluate and visualise a detector + counter."""


@main.command("train", context_settings={"ignore_unknown_options": False})
@click.option("--config", "config_name", default="cpu-small", show_default=True,
              help=f"Preset ({', '.join(PRESETS)}) or a TOML file.")
@click.option("--out", required=True, type=OutputPath(folder=True), help="Run folder for checkpoints and logs.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt with its config (OVERRIDES still apply).")
@click.argument("overrides", nargs=-1)
def train_command(config_name, out, resume, overrides) -> None:
    """Train DPSNet; OVERRIDES are config keys as key=value (see `dpsnet config`). Works under torchrun."""
    from .checkpoint import RESUME_KEYS, load_checkpoint
    from .distributed import shutdown_distributed
    from .training import train

    if resume:  # the run's own config, with the command line's overrides (e.g. a larger train.max_steps)
        saved = _run(load_checkpoint, Path(out) / "last.pt", (*RESUME_KEYS, "config"))["config"]
        config = _run(make_config, saved, overrides)
    else:
        config = _run(make_config, config_name, overrides)
        held = [name for name in RUN_FILES if (Path(out) / name).exists()]
        if held and _is_main():  # rank 0 alone: the others may see the files it has begun to write
            _fail(f"{out} holds a run ({held[0]}); pass --resume to continue it or choose a new --out")
    summary = _run(train, config, out, resume=resume)
    shutdown_distributed()
    if _is_main():
        click.echo(json.dumps(summary))


def _is_main() -> bool:
    from .distributed import dist_info

    return dist_info().is_main


@main.command("config")
@click.option("--config", "config_name", default=None, help=f"Preset ({', '.join(PRESETS)}) or a TOML file.")
@click.argument("overrides", nargs=-1)
def config_command(config_name, overrides) -> None:
    """Print every config key with its value and one line of help (a TOML file you can edit)."""
    click.echo(describe(_run(make_config, config_name, overrides)), nl=False)


@main.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint written by `dpsnet train`.")
@click.option("--instances", required=True, type=click.Path(), help="Pool or instances JSON listing the images.")
@click.option("--images", required=True, type=click.Path(), help="Folder of the images.")
@click.option("--out-results", required=True, type=OutputPath(), help="COCO results JSON to write.")
@click.option("--out-counts", required=True, type=OutputPath(), help="Counts file to write.")
@click.option("--batch-size", type=BATCH, default=4, show_default=True, help="Images per batch.")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help=DEVICE_HELP + ".")
@click.option("--score-thresh", type=SCORE, default=None, help="Drop detections below this score (default: the model's).")
@click.option("--agnostic-nms", type=FiniteFloat(0.0, 1.0), default=None,
              help="Class-agnostic NMS IoU (model.box_agnostic_nms_thresh; 0: off; default: the model's).")
@click.option("--test-flips", default=None,
              help="Test-time views fused with the plain one, e.g. hv or h,v,hv (model.test_flips; '': none; default: the model's).")
@click.option("--test-flip-iou", type=FiniteFloat(0.0, 1.0, lo_open=True), default=None,
              help="IoU grouping the views' detections (model.test_flip_iou; default: the model's).")
@click.option("--reclassifier", type=click.Path(dir_okay=False), default=None,
              help="A `dpsnet pretrain` file: its crop classifier re-scores each detection (dpsnet.inference.CropRescorer).")
@click.option("--reclassifier-power", type=POWER, default=0.5, show_default=True,
              help="New score = score x p(SKU) ** power.")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="bfloat16 autocast where the device computes it natively (CUDA, CPUs with AMX or AVX512-BF16); boxes and "
                   "counts stay float32.")
@click.option("--quiet", is_flag=True, help="No progress line (images done, rate, time left).")
def predict_command(checkpoint, instances, images, out_results, out_counts, batch_size, device, score_thresh,
                    agnostic_nms, test_flips, test_flip_iou, reclassifier, reclassifier_power, amp, quiet) -> None:
    """Detect and count every image of a pool; write COCO results and the counts file. Works under torchrun."""
    from .distributed import shutdown_distributed
    from .inference import predict_files

    _run(predict_files, checkpoint, instances, images, out_results, out_counts, batch_size=batch_size,
         device=device, score_thresh=score_thresh, agnostic_nms=agnostic_nms, test_flips=test_flips,
         test_flip_iou=test_flip_iou, reclassifier=reclassifier, reclassifier_power=reclassifier_power,
         progress=not quiet, amp=amp)
    shutdown_distributed()


@main.command("evaluate")
@click.option("--results", required=True, type=click.Path(), help="COCO results JSON from `dpsnet predict`.")
@click.option("--gt", required=True, type=click.Path(), help="Ground-truth instances JSON.")
@click.option("--protocol", type=click.Choice(["oracle", "transfer", "fixed"]), default="oracle", show_default=True,
              help="Score threshold protocol (transfer: chosen on --val-results/--val-gt).")
@click.option("--threshold", type=SCORE, default=None, help="Score threshold for --protocol fixed.")
@click.option("--val-results", type=click.Path(), default=None, help="Results on the val split (transfer).")
@click.option("--val-gt", type=click.Path(), default=None, help="Ground truth of the val split (transfer).")
@click.option("--counts", type=click.Path(), default=None, help="Counts file: also report the counting view's accuracy.")
@click.option("--json-out", type=OutputPath(), default=None, help="Also write the metrics as JSON.")
def evaluate_command(results, gt, protocol, threshold, val_results, val_gt, counts, json_out) -> None:
    """Print the RPC table (rpc-metrics) for RESULTS against GT, plus the counting view's accuracy."""
    from rpc_metrics.counts import count_accuracy, count_error

    for name, path in (("--results", results), ("--gt", gt), ("--val-results", val_results),
                       ("--val-gt", val_gt), ("--counts", counts)):
        if path is not None and not Path(path).is_file():
            _fail(f"{name}: file not found: {path}")
    if protocol == "transfer" and (val_results is None or val_gt is None):
        _fail("--protocol transfer needs --val-results and --val-gt")
    report = _run(evaluate, results, gt, protocol=protocol, threshold=threshold, val_results=val_results,
                  val_gt=val_gt, method="DPSNet")
    click.echo(report.to_markdown())
    out = {"report": report.to_dict()}
    if counts:
        loaded = _run(read_counts, counts)
        acc = _run(count_accuracy, loaded, gt)
        acc_total = _run(count_accuracy, loaded, gt, total=True)
        error = _run(count_error, loaded, gt)
        click.echo(f"counting view: {acc:.2%} of images counted exactly per class, {acc_total:.2%} in total "
                   f"(rounded density integrals); total before rounding: mean absolute error "
                   f"{error['mae']:.3f}, mean error {error['bias']:+.3f} objects per image")
        out["count_acc"], out["count_acc_total"] = acc, acc_total
        out["count_mae"], out["count_bias"] = error["mae"], error["bias"]
    if json_out:
        write_json(out, json_out, indent=2)


@main.command("pretrain")
@click.option("--instances", required=True, type=click.Path(), help="Exemplar instances JSON (RPC train split).")
@click.option("--images", required=True, type=click.Path(), help="Folder of the exemplar photos.")
@click.option("--out", required=True, type=OutputPath(), help="Weights file to write (model.backbone_weights).")
@click.option("--size", type=click.IntRange(16, 1024), default=64, show_default=True, help="Crop side in px (16-1024).")
@click.option("--channels", type=NumberList(click.IntRange(2, 4096), count=4, example="32,64,128,256"),
              default="32,64,128,256", show_default=True, help="Small backbone stage widths (as model.small_channels).")
@click.option("--steps", type=click.IntRange(1, MAX_ITERATIONS), default=3000, show_default=True, help="Optimiser steps (3000 x 64 crops: about 3 minutes on 2 cores).")
@click.option("--batch-size", type=BATCH, default=64, show_default=True, help="Crops per step.")
@click.option("--lr", type=FiniteFloat(0.0, 10.0, lo_open=True), default=0.05, show_default=True, help="Peak learning rate (SGD, cosine).")
@click.option("--camera", type=FiniteFloat(0.0, 1.0), default=0.5, show_default=True,
              help="Share of crops that also get camera effects (colour cast, blur, noise, JPEG), 0-1.")
@click.option("--specialist-steps", type=click.IntRange(0, MAX_ITERATIONS), default=0, show_default=True,
              help="Steps of each pair specialist (0: none): the SKU pairs the classifier confuses on its held-out "
                   "crops each get a two-class classifier, which `predict --reclassifier` uses too.")
@click.option("--specialist-min-rate", type=FiniteFloat(0.0, 1.0, lo_open=True), default=0.05,
              show_default=True, help="A pair gets a specialist when this share of its held-out crops is confused.")
@click.option("--max-specialists", type=click.IntRange(0, 10_000), default=8, show_default=True, help="At most this many.")
@click.option("--specialist-pair", "specialist_pairs", multiple=True, metavar="ID,ID",
              help="Two category ids that get a specialist whether or not the classifier confuses them on its "
                   "held-out crops (e.g. look-alikes from the store's catalogue); repeatable; each one is "
                   "trained, and confused pairs fill up to --max-specialists.")
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
              help="auto: bfloat16 autocast on a CPU with bfloat16 units (AMX: a step about a third faster) for crops of 32 px or more, float32 elsewhere.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
def pretrain_command(instances, images, out, size, channels, steps, batch_size, lr, camera, specialist_steps,
                     specialist_min_rate, max_specialists, specialist_pairs, precision, seed) -> None:
    """Pretrain the small backbone as an SKU classifier on exemplar crops (the stand-in for ImageNet weights)."""
    from .training import pretrain_backbone

    for name, path in (("--instances", instances), ("--images", images)):
        if not Path(path).exists():
            _fail(f"{name}: not found: {path}")
    pairs = []
    for text in specialist_pairs:
        try:
            pairs.append(tuple(int(c) for c in text.split(",")))
        except ValueError:
            _fail(f"--specialist-pair: {text!r} is not two category ids like 3,23")
    summary = _run(pretrain_backbone, instances, images, out, size=size, channels=channels, steps=steps,
                   batch_size=batch_size, lr=lr, camera=camera, seed=seed, specialist_steps=specialist_steps,
                   specialist_min_rate=specialist_min_rate, max_specialists=max_specialists,
                   specialist_pairs=pairs, precision=precision)
    click.echo(json.dumps(summary))


@main.command("crop-accuracy")
@click.option("--classifier", required=True, type=click.Path(), help="A `dpsnet pretrain` file (its crop classifier).")
@click.option("--instances", required=True, type=click.Path(), help="Instances JSON with the products' true boxes.")
@click.option("--images", required=True, type=click.Path(), help="Folder of its images.")
@click.option("--top", type=click.IntRange(0, 100_000), default=10, show_default=True, help="Confusions listed.")
@click.option("--json-out", type=OutputPath(), default=None, help="Also write the result as JSON.")
def crop_accuracy_command(classifier, instances, images, top, json_out) -> None:
    """How often the crop classifier (the re-scorer of `predict --reclassifier`) names each product's SKU from
    its true box, and its most frequent confusions."""
    from .inference import crop_accuracy

    for name, path in (("--classifier", classifier), ("--instances", instances), ("--images", images)):
        if not Path(path).exists():
            _fail(f"{name}: not found: {path}")
    result = _run(crop_accuracy, classifier, instances, images)
    click.echo(f"{result['right']} of {result['products']} products named right: {result['accuracy']:.2%}")
    for true, named, n in result["confusions"][:top]:
        click.echo(f"  SKU {true} named {named}: {n}")
    if json_out:
        write_json(result, json_out, indent=2)


@main.command("visualize")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint written by `dpsnet train`.")
@click.option("--instances", required=True, type=click.Path(), help="Pool or instances JSON listing the images.")
@click.option("--images", required=True, type=click.Path(), help="Folder of the images.")
@click.option("--out", required=True, type=OutputPath(folder=True), help="Folder for the PNGs.")
@click.option("--limit", type=click.IntRange(1, MAX_IMAGES), default=16, show_default=True, help="Number of images drawn.")
@click.option("--score-thresh", type=SCORE, default=0.5, show_default=True, help="Boxes drawn from this score up.")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help=DEVICE_HELP + ".")
def visualize_command(checkpoint, instances, images, out, limit, score_thresh, device) -> None:
    """Write PNGs with boxes, labels, scores and the density map overlaid."""
    from .inference import visualize_files

    paths = _run(visualize_files, checkpoint, instances, images, out, limit=limit, score_thresh=score_thresh,
                 device=device)
    click.echo(f"wrote {len(paths)} images to {out}")



@main.command("export")
@click.option("--format", "fmt", type=click.Choice(["bundle", "onnx"]), default="bundle", show_default=True,
              help="bundle: one .pt file for `dpsnet count` and dpsnet.Counter; onnx: a folder (the bundle, the "
                   "ONNX graphs, onnx.json) for dpsnet.deploy.onnx_runner.")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint written by `dpsnet train`.")
@click.option("--threshold", required=True, type=SCORE, help="Operating score threshold: a detection counts from it up.")
@click.option("--protocol", default="fixed", show_default=True,
              help="The protocol that chose --threshold (e.g. transfer: on the val split), kept in the bundle.")
@click.option("--score-thresh", type=SCORE, default=None, help="As `dpsnet predict`.")
@click.option("--agnostic-nms", type=FiniteFloat(0.0, 1.0), default=None, help="As `dpsnet predict`.")
@click.option("--test-flips", default=None, help="As `dpsnet predict`.")
@click.option("--test-flip-iou", type=FiniteFloat(0.0, 1.0, lo_open=True), default=None,
              help="As `dpsnet predict`.")
@click.option("--reclassifier", type=click.Path(dir_okay=False), default=None, help="As `dpsnet predict`.")
@click.option("--reclassifier-power", type=POWER, default=0.5, show_default=True,
              help="As `dpsnet predict`.")
@click.option("--out", required=True, type=click.Path(), help="Bundle file (bundle) or folder (onnx) to write.")
def export_command(fmt, checkpoint, threshold, protocol, score_thresh, agnostic_nms, test_flips, test_flip_iou,
                   reclassifier, reclassifier_power, out) -> None:
    """Write a deployment bundle (or ONNX folder) with everything `dpsnet predict` uses, and the threshold."""
    from .deploy import make_bundle, write_bundle

    if problem := output_problem(out, folder=fmt == "onnx"):
        _fail(f"--out: {out}: {problem}")
    bundle = _run(make_bundle, checkpoint, threshold, protocol=protocol, score_thresh=score_thresh,
                  agnostic_nms=agnostic_nms, test_flips=test_flips, test_flip_iou=test_flip_iou,
                  reclassifier=reclassifier, reclassifier_power=reclassifier_power)
    if fmt == "bundle":
        click.echo(f"wrote {write_bundle(bundle, out)}")
        return
    try:
        from .deploy.onnx_export import export_onnx
    except ImportError as err:
        _fail(f"--format onnx needs the export extra (pip install 'dpsnet[export]'): {err}")
    click.echo(f"wrote {_run(export_onnx, bundle, out)}")


@main.command("count")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model_path", required=True, type=click.Path(),
              help="Bundle from `dpsnet export` (a .pt file, or an exported folder).")
@click.option("--json", "json_out", type=OutputPath(), default=None,
              help="Write one JSON receipt per line to this file instead of the tables.")
@click.option("--draw", "draw_dir", type=OutputPath(folder=True), default=None,
              help="Folder for pictures with the counted boxes and SKU names.")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help=DEVICE_HELP + ".")
@click.option("--batch-size", type=BATCH, default=4, show_default=True, help="Images per batch.")
@click.option("--quiet", is_flag=True, help="No progress line on folders.")
def count_command(images, model_path, json_out, draw_dir, device, batch_size, quiet) -> None:
    """Count the products of IMAGES (files or folders): a receipt per image; exit 2 on bad input."""
    from .deploy import Counter
    from .deploy.files import collect_images, count_files

    _run(collect_images, images)  # missing files first, before the model loads
    counter = _run(Counter.load, model_path, device, batch_size=batch_size)
    _run(count_files, counter, images, json_out=json_out, draw_dir=draw_dir, progress=not quiet, echo=click.echo)


if __name__ == "__main__":
    main()
