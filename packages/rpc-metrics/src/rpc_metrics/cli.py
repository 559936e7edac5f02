"""``rpc-metrics``: evaluate RPC checkout results and validate the toolkit's files (a thin layer over the API)."""

from __future__ import annotations

import csv
import sys

import click

from rpc_metrics.cliargs import (
    MAX_IMAGE_SIDE,
    MAX_RESAMPLES,
    SEED,
    FiniteFloat,
    NumberList,
    OutputPath,
    ToolGroup,
)
from rpc_metrics.compare import compare
from rpc_metrics.errors import DEFAULT_SIZE_BINS, analyse_errors
from rpc_metrics.evaluate import COMPATS, PROTOCOLS, ROWS, SEARCHES, evaluate
from rpc_metrics.io import FormatError, atomic_output, load_json, read_instances, validate_file, write_json
from rpc_metrics.version import version_option

USAGE_ERROR = 2
# The coverage of a bootstrap interval, strictly between 0 and 1 (0.95 is usual).
COVERAGE = FiniteFloat(0.0, 1.0, lo_open=True, hi_open=True)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(USAGE_ERROR)


def _parse_levels(values: tuple[str, ...]) -> list[str] | None:
    levels = [lv.strip() for value in values for lv in value.split(",") if lv.strip()]
    for level in levels:
        if level not in ROWS:
            raise click.BadParameter(f"{level!r} is not a level; choose among {', '.join(ROWS)}", param_hint="--levels")
    return levels or None


@click.group(cls=ToolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("rpc-metrics")
def main() -> None:
    """Exact, fast RPC checkout evaluation (cAcc, mCIoU, ACD, mCCD, mAP50, mmAP per level)."""


def _check_protocol(protocol, threshold, val_results, val_gt) -> None:
    if protocol == "fixed" and threshold is None:
        raise click.UsageError("--protocol fixed needs --threshold")
    if protocol == "transfer" and (val_results is None or val_gt is None):
        raise click.UsageError("--protocol transfer needs --val-results and --val-gt")
    if threshold is not None and protocol != "fixed":
        raise click.UsageError("--threshold is only used with --protocol fixed")


def _check_compat(compat, protocol, search, intervals) -> None:
    """One-line refusals (exit 2) of what --compat rpctool cannot reproduce."""
    if compat is None:
        return
    if protocol != "oracle":
        _fail(f"--compat rpctool reproduces rpctool's oracle threshold: it cannot be used with --protocol {protocol}")
    if search != "grid":
        _fail("--compat rpctool reproduces rpctool's grid search: add --search grid")
    if intervals:
        _fail("--compat rpctool gives rpctool's point estimates only: drop --intervals")


def _threshold_options(command):
    """RESULTS, GT and the options that choose the score threshold, shared by `evaluate` and `errors`."""
    options = [
        click.argument("results", type=click.Path(dir_okay=False)),
        click.argument("gt", type=click.Path(dir_okay=False)),
        click.option("--protocol", type=click.Choice(PROTOCOLS), default="oracle", show_default=True,
                     help="How the score threshold is chosen: on the evaluated set (oracle), given (fixed), or on "
                          "a validation pair (transfer)."),
        click.option("--threshold", type=FiniteFloat(), default=None,
                     help="The score threshold of the fixed protocol."),
        click.option("--val-results", type=click.Path(dir_okay=False), default=None,
                     help="Validation results file (transfer protocol)."),
        click.option("--val-gt", type=click.Path(dir_okay=False), default=None,
                     help="Validation ground-truth file (transfer protocol)."),
        click.option("--search", type=click.Choice(SEARCHES), default="exact", show_default=True,
                     help="Threshold search: exact optimum over all scores, or the published tool's grid."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("evaluate")
@_threshold_options
@click.option("--no-map", is_flag=True, help="Skip mAP50 and mmAP (counting metrics only).")
@click.option("--levels", multiple=True, metavar="LEVELS",
              help="Rows to report, comma-separated among easy,medium,hard,averaged (default: all that exist).")
@click.option("--method", default="default", show_default=True, help="Method name printed in the table.")
@click.option("--map-backend", type=click.Choice(["fast", "pycocotools"]), default="fast", show_default=True,
              help="mAP implementation: the vectorized one or pycocotools (the reference, slower).")
@click.option("--json", "json_out", type=OutputPath(), default=None,
              help="Also write the rows (and thresholds) to this JSON file.")
@click.option("--per-category", "csv_out", type=OutputPath(), default=None,
              help="Also write per-level, per-category counts, CCD, CIoU and AP to this CSV file.")
@click.option("--intervals", type=click.IntRange(0, MAX_RESAMPLES), default=0, show_default=True,
              help="Bootstrap resamples of each row's images for percentile intervals (0: none; 1000 is usual).")
@click.option("--interval-seed", type=SEED, default=0, show_default=True,
              help="Seed of the bootstrap resamples (the same seed gives the same intervals).")
@click.option("--confidence", type=COVERAGE, default=0.95, show_default=True,
              help="Coverage of the intervals, between 0 and 1.")
@click.option("--compat", type=click.Choice(COMPATS), default=None,
              help="Reproduce rpctool 0.1.6 exactly (needs --search grid, oracle protocol): counting metrics over the "
                   "images with a detection at the threshold only.")
def evaluate_command(results, gt, protocol, threshold, val_results, val_gt, search, no_map, levels, method,
                     map_backend, json_out, csv_out, intervals, interval_seed, confidence, compat) -> None:
    """Evaluate RESULTS (COCO results JSON) against GT (RPC instances JSON) and print the markdown table."""
    _check_protocol(protocol, threshold, val_results, val_gt)
    _check_compat(compat, protocol, search, intervals)
    try:
        report = evaluate(
            results, gt, protocol=protocol, threshold=threshold, val_results=val_results, val_gt=val_gt,
            search=search, compute_map=not no_map, levels=_parse_levels(levels), map_backend=map_backend,
            method=method, intervals=intervals, interval_seed=interval_seed, confidence=confidence, compat=compat,
        )
    except ValueError as err:  # FormatError (bad input file) or a bad argument value
        _fail(str(err))
    click.echo(report.to_markdown())
    if json_out:
        write_json(report.to_dict(), json_out, indent=2)
    if csv_out:
        records = report.per_category_records()
        with atomic_output(csv_out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["level", "category_id"])
            writer.writeheader()
            writer.writerows(records)


@main.command("errors")
@_threshold_options
@click.option("--iou", type=FiniteFloat(0.0, 1.0, lo_open=True), default=0.5, show_default=True,
              help="Overlap at which a detection covers an object.")
@click.option("--size-bins", type=NumberList(FiniteFloat(0.0, MAX_IMAGE_SIDE, lo_open=True), order="<",
                                             example="16,32,64"),
              default=",".join(f"{b:g}" for b in DEFAULT_SIZE_BINS), show_default=True,
              help="Edges (pixels) of the bins of the objects' shorter box side.")
@click.option("--levels", multiple=True, metavar="LEVELS",
              help="Rows to report, comma-separated among easy,medium,hard,averaged (default: all that exist).")
@click.option("--top", type=click.IntRange(0, 100_000), default=10, show_default=True,
              help="Confused SKU pairs to print.")
@click.option("--json", "json_out", type=OutputPath(), default=None,
              help="Also write the rows (every confusion pair and size bin) to this JSON file.")
def errors_command(results, gt, protocol, threshold, val_results, val_gt, search, iou, size_bins, levels, top,
                   json_out) -> None:
    """Say why images are miscounted: objects missed, objects given the wrong SKU, extra detections.

    Per row: images right, under-counted, over-counted or both; objects found, named wrong or missed; extra
    detections; the images that would be right with every error of one kind undone; objects by size; the most
    confused SKU pairs.
    """
    _check_protocol(protocol, threshold, val_results, val_gt)
    try:
        report = analyse_errors(results, gt, protocol=protocol, threshold=threshold, val_results=val_results,
                                val_gt=val_gt, search=search, iou=iou, size_bins=list(size_bins),
                                levels=_parse_levels(levels), top=top)
    except ValueError as err:  # FormatError (bad input file) or a bad argument value
        _fail(str(err))
    click.echo(report.to_markdown())
    if json_out:
        write_json(report.to_dict(), json_out, indent=2)


def _check_compare_protocol(protocol, threshold_a, threshold_b, val_results_a, val_results_b, val_gt) -> None:
    if protocol == "fixed" and (threshold_a is None or threshold_b is None):
        raise click.UsageError("--protocol fixed needs --threshold-a and --threshold-b")
    if protocol == "transfer" and None in (val_results_a, val_results_b, val_gt):
        raise click.UsageError("--protocol transfer (the default) needs --val-results-a, --val-results-b and --val-gt; "
                               "or give --protocol fixed or oracle")
    if protocol != "fixed" and (threshold_a is not None or threshold_b is not None):
        raise click.UsageError("--threshold-a and --threshold-b are only used with --protocol fixed")


@main.command("compare")
@click.argument("results_a", type=click.Path(dir_okay=False))
@click.argument("results_b", type=click.Path(dir_okay=False))
@click.argument("gt", type=click.Path(dir_okay=False))
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="transfer", show_default=True,
              help="How each model's threshold is chosen: on its validation results (transfer), given (fixed), or "
                   "on the evaluated images (oracle).")
@click.option("--val-results-a", type=click.Path(dir_okay=False), default=None,
              help="Model A's results on the validation images (transfer protocol).")
@click.option("--val-results-b", type=click.Path(dir_okay=False), default=None,
              help="Model B's results on the validation images (transfer protocol).")
@click.option("--val-gt", type=click.Path(dir_okay=False), default=None,
              help="Validation ground-truth file (transfer protocol).")
@click.option("--threshold-a", type=FiniteFloat(), default=None,
              help="Model A's score threshold (fixed protocol).")
@click.option("--threshold-b", type=FiniteFloat(), default=None,
              help="Model B's score threshold (fixed protocol).")
@click.option("--search", type=click.Choice(SEARCHES), default="exact", show_default=True,
              help="Threshold search: exact optimum over all scores, or the published tool's grid.")
@click.option("--levels", multiple=True, metavar="LEVELS",
              help="Rows to report, comma-separated among easy,medium,hard,averaged (default: all that exist).")
@click.option("--n-boot", type=click.IntRange(1, MAX_RESAMPLES), default=1000, show_default=True,
              help="Bootstrap resamples of each row's images, the same for A and B.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the resamples.")
@click.option("--confidence", type=COVERAGE, default=0.95, show_default=True,
              help="Coverage of the interval of B - A, between 0 and 1.")
@click.option("--no-map", is_flag=True, help="Skip mAP50 and mmAP (the slowest part of the bootstrap).")
@click.option("--json", "json_out", type=OutputPath(), default=None,
              help="Also write the comparison to this JSON file.")
def compare_command(results_a, results_b, gt, protocol, val_results_a, val_results_b, val_gt, threshold_a,
                    threshold_b, search, levels, n_boot, seed, confidence, no_map, json_out) -> None:
    """Compare RESULTS_B with RESULTS_A on the same GT images: B - A per metric with a paired bootstrap interval."""
    _check_compare_protocol(protocol, threshold_a, threshold_b, val_results_a, val_results_b, val_gt)
    try:
        report = compare(
            results_a, results_b, gt, protocol=protocol, val_results_a=val_results_a, val_results_b=val_results_b,
            val_gt=val_gt, threshold_a=threshold_a, threshold_b=threshold_b, search=search,
            levels=_parse_levels(levels), n_boot=n_boot, seed=seed, confidence=confidence, compute_map=not no_map,
        )
    except ValueError as err:  # FormatError (bad input file) or a bad argument value
        _fail(str(err))
    click.echo(report.to_markdown())
    if json_out:
        write_json(report.to_dict(), json_out, indent=2)


@main.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--gt", type=click.Path(dir_okay=False), default=None,
              help="Ground truth (or pool) to check results' and counts' image and category ids against.")
def validate_command(files, gt) -> None:
    """Check FILES (instances, pool, results or counts JSON) and say what is wrong; exit 2 on any problem."""
    try:
        reference = read_instances(load_json(gt), source=gt) if gt else None
    except FormatError as err:
        _fail(str(err))
    failed = False
    for path in files:
        try:
            click.echo(f"ok: {path}: {validate_file(path, gt=reference)}")
        except FormatError as err:
            click.echo(f"error: {err}", err=True)
            failed = True
    if failed:
        sys.exit(USAGE_ERROR)


if __name__ == "__main__":
    main()
