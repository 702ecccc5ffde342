"""``cdc-cache dev``: run the local stack from registry packages, without Docker.

With ``--json`` each command prints one JSON document on stdout (what ``status`` shows,
after ``up``; what was stopped, for ``down``) and its progress lines go to stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import click

from cdc_cache.cli.report import JSON_OUTPUT, echo_json
from cdc_cache.tools.devstack.process import StackError
from cdc_cache.tools.devstack.stack import (
    DEFAULT_SERVICES,
    SERVICES,
    ServiceStatus,
    Stack,
    StackConfig,
)

_SERVICE_ARG = click.argument("services", nargs=-1, type=click.Choice(SERVICES))
_WITH_POSTGRES = click.option(
    "--with-postgres", is_flag=True, help="Include PostgreSQL (off by default)."
)
_WITH_DEBEZIUM = click.option(
    "--with-debezium",
    is_flag=True,
    help="Include Debezium's embedded engine streaming MariaDB's database inventory into "
    "topics dbserver1.* (off by default; needs Java).",
)


def _requested(services: Sequence[str], with_postgres: bool, with_debezium: bool) -> list[str]:
    chosen = list(services) or list(DEFAULT_SERVICES)
    extra = [("postgres", with_postgres), ("debezium", with_debezium)]
    chosen += [name for name, wanted in extra if wanted and name not in chosen]
    return chosen


def _stack() -> Stack:
    try:
        return Stack(StackConfig.from_env())
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc


def _progress(as_json: bool) -> Callable[[str], None]:
    """Progress lines: on stdout, or on stderr when stdout carries the JSON document."""
    return lambda line: click.echo(line, err=as_json)


def _rows_json(stack: Stack, rows: Sequence[ServiceStatus], requested: Sequence[str]) -> Any:
    services = [asdict(r) | {"requested": r.service in requested} for r in rows]
    return {"home": str(stack.config.home), "services": services}


@click.group()
def dev() -> None:
    """Local servers for development and tests: Redis, broker, MariaDB, PostgreSQL, Debezium.

    State lives under $CDC_CACHE_HOME (default ./.cdc-cache/dev); ports are set with
    CDC_CACHE_DEV_<SERVICE>_PORT (defaults: redis 16379, broker 19092, mariadb 13306,
    postgres 15432).
    """


@dev.command()
@_WITH_POSTGRES
@_WITH_DEBEZIUM
@_SERVICE_ARG
@JSON_OUTPUT
def up(services: tuple[str, ...], with_postgres: bool, with_debezium: bool, as_json: bool) -> None:
    """Start SERVICES (default: redis, broker, mariadb); running ones are left as they are.

    With --json, prints the started services as ``status --json`` does.
    """
    stack = _stack()
    progress = _progress(as_json)
    progress(f"home {stack.config.home}")
    requested = _requested(services, with_postgres, with_debezium)
    try:
        stack.up(requested, progress=progress)
        rows = stack.status(requested) if as_json else []
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json(_rows_json(stack, rows, requested))


@dev.command()
@_SERVICE_ARG
@JSON_OUTPUT
def down(services: tuple[str, ...], as_json: bool) -> None:
    """Stop SERVICES (default: every service of the stack)."""
    stack = _stack()
    try:
        stopped = stack.down(services or SERVICES, progress=_progress(as_json))
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json({"home": str(stack.config.home), "stopped": stopped})


@dev.command()
@_WITH_POSTGRES
@_WITH_DEBEZIUM
@_SERVICE_ARG
@JSON_OUTPUT
def status(
    services: tuple[str, ...], with_postgres: bool, with_debezium: bool, as_json: bool
) -> None:
    """Show each server's state, pid and address; exit 1 if a requested one is down.

    Requested are SERVICES (default: redis, broker, mariadb, plus postgres with
    --with-postgres, debezium with --with-debezium); other services are listed only
    while they run.
    """
    requested = _requested(services, with_postgres, with_debezium)
    stack = _stack()
    try:
        rows = stack.status()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    shown = [r for r in rows if r.service in requested or r.up]
    down = any(not r.up for r in shown if r.service in requested)
    if as_json:
        echo_json(_rows_json(stack, shown, requested))
        if down:
            raise SystemExit(1)
        return
    header = ("SERVICE", "STATE", "PID", "ADDRESS")
    table = [header, *((r.service, r.state, str(r.pid or "-"), r.address) for r in shown)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    if down:
        raise SystemExit(1)
