"""``cdc-cache dlq``: list, inspect and replay dead letters."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cdc_cache.cli.report import JSON_OUTPUT, echo_json, reported, with_options
from cdc_cache.core.errors import POISON_KINDS, ConfigError


@click.group()
def dlq() -> None:
    """List, inspect and replay dead letters (messages the worker set aside).

    Reads the worker's settings (--config, CDC_CACHE_* variables, or the flags below) for
    the rules, brokers, Redis, DLQ topic and source epoch.
    """


def _dlq_options(command: Callable[..., None]) -> Callable[..., None]:
    return with_options(
        command,
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="The worker's settings file (YAML).",
        ),
        click.option("--rules", type=click.Path(path_type=Path), help="Rules file (YAML)."),
        click.option("--brokers", help="Kafka bootstrap servers, comma-separated."),
        click.option("--redis-url", help="The cache's Redis."),
        click.option("--dlq-topic", help="The dead-letter topic (default cdc-cache.dlq)."),
        click.option("--table", help="Only entries of this table (<db>.<table>)."),
        click.option(
            "--kind",
            type=click.Choice(list(POISON_KINDS)),
            help="Only entries of this kind.",
        ),
        click.option("--since", help="Only entries that failed at or after this ISO 8601 time."),
        click.option("--until", help="Only entries that failed at or before this ISO 8601 time."),
    )


def _dlq_service(config_file: Path | None, flags: dict[str, Any]) -> tuple[Any, Any]:
    """The DlqService for these settings and the EntryFilter of the filter flags."""
    from cdc_cache.app.load import load
    from cdc_cache.app.replay import DlqService
    from cdc_cache.app.settings import SharedSettings
    from cdc_cache.core.keys import use_namespace
    from cdc_cache.dlq.filters import entry_filter
    from cdc_cache.plan.rules_loader import load_rules

    try:
        where = entry_filter(*(flags.pop(name) for name in ("table", "kind", "since", "until")))
    except ValueError as exc:
        msg = f"--{exc}"
        raise ConfigError(msg) from exc
    settings = load(SharedSettings, config_file, **flags)
    use_namespace(settings.namespace)
    return DlqService(settings, load_rules(settings.rules, settings.table_identity)), where


@dlq.command("list")
@_dlq_options
@JSON_OUTPUT
def dlq_list(config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """One line per entry: id, failed at, kind, table, source, last replay, reason.

    With --json, a list of the entries as dlq show prints them.
    """
    with reported("cdc-cache dlq list", flags.get("redis_url")):
        service, where = _dlq_service(config_file, flags)
        entries = service.entries(where)
    if as_json:
        echo_json(entries)
        return
    for entry in entries:
        source = entry["source"]
        outcome = entry.get("outcome")
        replayed = f"{outcome['outcome']}@{outcome['at']}" if outcome else "not-replayed"
        click.echo(
            f"{entry['id']}  {entry['failed_at']}  {entry['kind']:<15} {entry['table']}  "
            f"{source['topic']}[{source['partition']}]@{source['offset']}  {replayed}  "
            f"{entry['reason']}"
        )
    click.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}", err=True)


@dlq.command("show")
@click.argument("entry_id")
@_dlq_options
def dlq_show(entry_id: str, config_file: Path | None, **flags: Any) -> None:
    """Print one entry as JSON (message, stack, source offsets, last replay)."""
    import orjson

    with reported("cdc-cache dlq show", flags.get("redis_url")):
        service, _ = _dlq_service(config_file, flags)
        entry = service.entry(entry_id)
    if entry is None:
        click.echo(f"cdc-cache dlq show: no entry {entry_id!r}", err=True)
        sys.exit(1)
    click.echo(orjson.dumps(entry, option=orjson.OPT_INDENT_2).decode())


@dlq.command("replay")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry the filters match.")
@_dlq_options
@JSON_OUTPUT
def dlq_replay(
    entry_ids: tuple[str, ...],
    replay_all: bool,
    config_file: Path | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Replay entries by id, or every entry matching the filters with --all.

    Each message is read again from its source topic and goes through decode, plan and
    the version-gated apply; a replayed or outdated change changes nothing. --all shows
    its progress on stderr. Exit 1 if an entry is unknown or a replay failed.
    """
    from dataclasses import asdict, replace

    from cdc_cache.cli.progress import Progress

    if bool(entry_ids) == replay_all:
        msg = "give entry ids, or --all (with optional filters), not both"
        raise click.UsageError(msg)
    with reported("cdc-cache dlq replay", flags.get("redis_url")):
        service, where = _dlq_service(config_file, flags)
        if entry_ids:
            where = replace(where, ids=frozenset(entry_ids))
        entries = service.entries(where)
        with Progress("replaying dead letters") as progress:
            outcomes = service.replay(entries, progress if replay_all else None)
    missing = sorted(set(entry_ids) - {entry["id"] for entry in entries})
    if as_json:
        echo_json({"outcomes": [asdict(o) for o in outcomes], "unknown": missing})
    else:
        for outcome in outcomes:
            click.echo(f"{outcome.id}  {outcome.outcome}  {outcome.detail}")
        for entry_id in missing:
            click.echo(f"{entry_id}  unknown (no such entry)", err=True)
    sys.exit(1 if missing or any(o.outcome == "failed" for o in outcomes) else 0)
