"""``kd-loop``: run the distillation loop from a TOML config, and show a run's rounds."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kd_loop.config import ConfigError, describe_keys, load_config
from kd_loop.loop import run_loop
from kd_loop.summary import format_table, round_rows
from rpc_metrics.cliargs import ToolGroup
from rpc_metrics.io import FormatError
from rpc_metrics.version import version_option

USAGE_ERROR = 2
MAX_ROUNDS = 1000  # each round retrains a model; the published loop stops after 3 to 5


@click.group(cls=ToolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("kd-loop")
def main() -> None:
    """Iterative knowledge distillation with label-free pseudo-label selection."""


def _print_keys(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        click.echo(describe_keys())
        ctx.exit()


@main.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--help-config", is_flag=True, is_eager=True, expose_value=False, callback=_print_keys,
              help="Print every config key with its default and meaning, and exit.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--rounds", type=click.IntRange(0, MAX_ROUNDS), default=None, help="Number of distillation rounds (overrides the config).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the run (overrides the config); an existing run there is resumed.")
def run_command(config, overrides, rounds, workdir) -> None:
    """Run, or resume, the loop described by CONFIG (TOML); KEY=VALUE pairs override config keys."""
    try:
        loop_config = load_config(config, overrides)
        summary = run_loop(loop_config, rounds=rounds, workdir=workdir)
    except (ConfigError, FormatError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(USAGE_ERROR)
    click.echo(summary.read_text())


@main.command("status")
@click.argument("workdir", type=click.Path(file_okay=False, exists=True, path_type=Path))
def status_command(workdir) -> None:
    """Table of the rounds of the run in WORKDIR: selection counts, precision and cAcc when measured."""
    try:
        rows = round_rows(workdir)
    except FormatError as err:  # a damaged selection.json or metrics.json
        click.echo(f"error: {err}", err=True)
        sys.exit(USAGE_ERROR)
    if not rows:
        click.echo(f"error: {workdir} holds no round_* folder; is it a kd-loop workdir?", err=True)
        sys.exit(USAGE_ERROR)
    click.echo(format_table(rows))


@main.command("keys")
def keys_command() -> None:
    """Every config key with its default and meaning."""
    click.echo(describe_keys())


if __name__ == "__main__":
    main()
