"""``cdc-cache continuity``: the recorded discontinuities, and an operator's way forward."""

from __future__ import annotations

import time
from typing import Any

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
