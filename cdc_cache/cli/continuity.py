"""``cdc-cache continuity``: the recorded discontinuities, and an operator's way forward."""

from __future__ import annotations

import time
from typing import Any

import click

from cdc_cache.cli.report import JSON_OUTPUT, NAMESPACE, REDIS_URL, echo_json, reported
from cdc_cache.continuity.model import Action
from cdc_cache.continuity.store import ContinuityStore
from cdc_cache.core.errors import ConfigError
from cdc_cache.source.topics import table_of_topic

_REREAD_IMPOSSIBLE = (
    "{where}: the records after offset {offset} were removed before they were read; "
    "re-reading cannot bring them back. Ask the connector for a re-snapshot of {table} "
    "(README: Source continuity), then run `cdc-cache continuity accept`"
)


def status_lines(records: dict[str, dict[str, Any]]) -> list[str]:
    """What ``status`` prints: one block per held partition, with its ways forward."""
    if not records:
        return ["no source discontinuity recorded: every partition reads continuously"]
    lines = []
    for where, record in sorted(records.items()):
        detected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record["detected_ms"] / 1000))
        table = table_of_topic(record["topic"]) or record["topic"]
        lines += [
            f"{where}  {record['kind']}  {record['state']}  since {detected}",
            f"  {record['reason']}",
            f"  ways forward: {', '.join(record['ways_forward'])}; or re-snapshot {table} "
            "through the connector, then accept",
        ]
    return lines


def chosen(
    records: dict[str, dict[str, Any]], topic: str, partition: int | None, action: Action
) -> dict[str, dict[str, Any]]:
    """The held records ``action`` applies to; refuses what it cannot do."""
    picked = {
        where: record
        for where, record in records.items()
        if record["topic"] == topic
        and (partition is None or record["partition"] == partition)
        and record["state"] == "held"
    }
    if not picked:
        part = "" if partition is None else f"[{partition}]"
        msg = f"no held discontinuity recorded for {topic}{part} (see cdc-cache continuity status)"
        raise ConfigError(msg)
    for where, record in picked.items():
        if action.value not in record["ways_forward"]:
            table = table_of_topic(record["topic"]) or record["topic"]
            msg = _REREAD_IMPOSSIBLE.format(
                where=where, offset=record["stored"]["offset"], table=table
            )
            raise ConfigError(msg)
    return picked


def decide(store: ContinuityStore, picked: dict[str, dict[str, Any]], action: Action) -> None:
    """Record ``action`` for each picked partition; their workers act within a second."""
    now_ms = int(time.time() * 1000)
    for where, record in picked.items():
        store.decide(where, action, record["key"], now_ms)


@click.group()
def continuity() -> None:
    """Source discontinuities (a recreated topic, records removed before they were read).

    The worker pauses such a partition and holds the cache in ttl mode until one of these
    decides how it goes on (README: Source continuity).
    """


_TOPIC = click.option("--topic", required=True, help="The topic whose partitions to resolve.")
_PARTITION = click.option("--partition", type=int, help="Only this partition (default: all).")


@continuity.command("status")
@REDIS_URL
@NAMESPACE
@JSON_OUTPUT
def continuity_status(redis_url: str, as_json: bool) -> None:
    """Print each held partition: what broke, both offsets and topic ids, ways forward."""
    from cdc_cache.continuity.store import ContinuityStore
    from cdc_cache.sink.connection import connect

    with reported("cdc-cache continuity status", redis_url):
        records = ContinuityStore(connect(redis_url)).records()
    if as_json:
        echo_json(records)
        return
    for line in status_lines(records):
        click.echo(line)


@continuity.command("reread")
@_TOPIC
@_PARTITION
@REDIS_URL
@NAMESPACE
@JSON_OUTPUT
def continuity_reread(topic: str, partition: int | None, redis_url: str, as_json: bool) -> None:
    """Read the topic again from its start (versions make it idempotent).

    The cache stays in ttl mode until the re-read has caught up with the topic's end.
    Refused where records were removed unread: re-reading cannot bring them back.
    """
    _continuity_decide("reread", topic, partition, redis_url, as_json=as_json)


@continuity.command("accept")
@_TOPIC
@_PARTITION
@REDIS_URL
@NAMESPACE
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@JSON_OUTPUT
def continuity_accept(
    topic: str, partition: int | None, redis_url: str, yes: bool, as_json: bool
) -> None:
    """Accept the gap: go on from the topic's start and leave ttl mode now.

    Changes the topic no longer holds are not applied: use this after a re-snapshot of
    the affected tables, or when the cache may keep what it missed until its TTLs.
    """
    _continuity_decide("accept", topic, partition, redis_url, confirmed=yes, as_json=as_json)


def _continuity_decide(
    action: str,
    topic: str,
    partition: int | None,
    redis_url: str,
    *,
    confirmed: bool = True,
    as_json: bool = False,
) -> None:
    """Record the decision; with ``as_json`` the document is the only thing on stdout."""
    from cdc_cache.continuity.model import Action
    from cdc_cache.continuity.store import ContinuityStore
    from cdc_cache.sink.connection import connect

    command = f"cdc-cache continuity {action}"
    with reported(command, redis_url):
        store = ContinuityStore(connect(redis_url))
        picked = chosen(store.records(), topic, partition, Action(action))
        for where, record in sorted(picked.items()):
            click.echo(f"{where}: {record['reason']}", err=as_json)
        if not confirmed:
            click.confirm(
                f"Changes missing from {', '.join(sorted(picked))} will not be applied. Accept?",
                abort=True,
                err=as_json,
            )
        decide(store, picked, Action(action))
    if as_json:
        reasons = {where: record["reason"] for where, record in sorted(picked.items())}
        echo_json({"action": action, "partitions": reasons})
        return
    click.echo(f"{action} recorded for {', '.join(sorted(picked))}; workers act within a second")
