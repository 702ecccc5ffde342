"""The ``cdc-cache`` command line."""

from __future__ import annotations

import click

from cdc_cache import __version__


@click.group()
@click.version_option(__version__, prog_name="cdc-cache")
def main() -> None:
    """cdc-cache: Debezium change events to version-gated Redis cache operations."""
