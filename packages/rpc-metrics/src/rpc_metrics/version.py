"""The ``--version`` option every CLI of the toolkit shares: the installed distribution's version, read once."""

from __future__ import annotations

import importlib.metadata

import click


def installed_version(distribution: str) -> str:
    """``distribution``'s installed version; ``"unknown"`` when run from a source folder that is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def version_option(distribution: str):
    """click's ``--version`` for the command named like ``distribution``: ``NAME, version X.Y.Z``."""
    return click.version_option(installed_version(distribution), prog_name=distribution)
