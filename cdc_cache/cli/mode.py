"""``cdc-cache mode``: read or force the cache mode."""

from __future__ import annotations

import click

from cdc_cache.cli.report import JSON_OUTPUT, NAMESPACE, REDIS_URL, echo_json, reported
from cdc_cache.core.errors import ConfigError


@click.group()
def mode() -> None:
    """Read or force the cache mode (cdc: invalidations; ttl: short TTLs while lagging)."""


@mode.command("get")
@REDIS_URL
@NAMESPACE
@JSON_OUTPUT
def mode_get(redis_url: str, as_json: bool) -> None:
    """Print the operator flag and the effective mode with its reason and since when.

    A forced flag the worker keeps after its key vanished is shown as kept (``flag_lost``).
    """
    import time

    from cdc_cache.core.keys import ns
    from cdc_cache.fallback.store import ModeStore
    from cdc_cache.mode.controller import Flag, kept_flag
    from cdc_cache.mode.record import ModeRecord
    from cdc_cache.sink.connection import connect

    with reported("cdc-cache mode get", redis_url):
        store = ModeStore(connect(redis_url))
        invalid = None
        try:
            stored = store.stored_flag()
        except ConfigError as exc:
            stored, invalid = Flag.AUTO, f"invalid ({exc})"
        record = ModeRecord.parse(store.record())
    kept, lost = kept_flag(stored, record.flag if record is not None else Flag.AUTO)
    flag = invalid or kept.value
    if as_json:
        lost_field = {"flag_lost": True} if lost else {}
        echo_json({"flag": flag, **lost_field, "mode": record})  # mode null: none published yet
        return
    if lost:
        flag += (
            f" (kept by the worker: {ns().mode_flag} vanished without an operator clearing "
            "it; `cdc-cache mode set` it again, or to auto)"
        )
    click.echo(f"flag:   {flag}")
    if record is None:
        click.echo("mode:   unknown (no worker has published a mode yet)")
        return
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.since_ms / 1000))
    click.echo(f"mode:   {record.mode.value}")
    click.echo(f"reason: {record.reason} ({record.cause.value})")
    click.echo(f"since:  {since} ({record.since_ms})")
    click.echo(f"lag_s:  {record.lag_s or 'unknown'}")
    click.echo(f"writer: {record.writer}")


@mode.command("set")
@click.argument("flag", type=click.Choice(["auto", "cdc", "ttl"]))
@REDIS_URL
@NAMESPACE
@JSON_OUTPUT
def mode_set(flag: str, redis_url: str, as_json: bool) -> None:
    """Set the operator flag: auto follows the lag, cdc or ttl force that mode."""
    from cdc_cache.fallback.store import ModeStore
    from cdc_cache.mode.controller import Flag
    from cdc_cache.sink.connection import connect

    with reported("cdc-cache mode set", redis_url):
        store = ModeStore(connect(redis_url))
        store.set_flag(Flag(flag))
        stored = store.flag().value
    if as_json:
        echo_json({"flag": stored})
        return
    click.echo(f"flag set to {stored}; workers apply it within a second")
