"""``cdc-cache dev``: run the local stack from registry packages, without Docker."""

from __future__ import annotations

from collections.abc import Sequence

import click

from cdc_cache.tools.devstack.process import StackError
from cdc_cache.tools.devstack.stack import DEFAULT_SERVICES, SERVICES, Stack, StackConfig

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
def up(services: tuple[str, ...], with_postgres: bool, with_debezium: bool) -> None:
    """Start SERVICES (default: redis, broker, mariadb); running ones are left as they are."""
    stack = _stack()
    click.echo(f"home {stack.config.home}")
    try:
        stack.up(_requested(services, with_postgres, with_debezium), progress=click.echo)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc


@dev.command()
@_SERVICE_ARG
def down(services: tuple[str, ...]) -> None:
    """Stop SERVICES (default: every service of the stack)."""
    try:
        _stack().down(services or SERVICES, progress=click.echo)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc


@dev.command()
@_WITH_POSTGRES
@_WITH_DEBEZIUM
@_SERVICE_ARG
def status(services: tuple[str, ...], with_postgres: bool, with_debezium: bool) -> None:
    """Show each server's state, pid and address; exit 1 if a requested one is down.

    Requested are SERVICES (default: redis, broker, mariadb, plus postgres with
    --with-postgres, debezium with --with-debezium); other services are listed only
    while they run.
    """
    requested = _requested(services, with_postgres, with_debezium)
    try:
        rows = _stack().status()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    shown = [r for r in rows if r.service in requested or r.up]
    header = ("SERVICE", "STATE", "PID", "ADDRESS")
    table = [header, *((r.service, r.state, str(r.pid or "-"), r.address) for r in shown)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    if any(not r.up for r in shown if r.service in requested):
        raise SystemExit(1)
