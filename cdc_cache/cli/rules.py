"""``cdc-cache rules``: check a rules file (optionally against the database), print its schema."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cdc_cache.cli.report import JSON_OUTPUT, echo_json, reported


@click.group()
def rules() -> None:
    """Check a rules file, or print the JSON Schema editors validate it with."""


@rules.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--db", "dsn", help="Also check tables and columns: mysql://user:pass@host:port/db or "
    "postgresql://...",
)  # fmt: skip
@JSON_OUTPUT
def check(file: Path, dsn: str | None, as_json: bool) -> None:
    """Validate FILE; exit 0 if it fits, 1 with every problem (file:line), 2 if it cannot run.

    With --db, every table the rules cover must exist and every column they name must be
    one of its columns.
    """
    from cdc_cache.tools.rules_check import check as run_check

    with reported("cdc-cache rules check"):
        report = run_check(file, dsn)
    if as_json:
        echo_json(report.as_json())
    else:
        click.echo(report.format())
    sys.exit(report.exit_code)


@rules.command()
def schema() -> None:
    """Print the rules file's JSON Schema (committed as docs/rules.schema.json)."""
    from cdc_cache.plan.rules_schema import schema as rules_schema

    echo_json(rules_schema())
