"""The notifications of a change: its channels, its payload, and where it rides in a batch.

Pure, like the planner that calls it: a notification goes right after its host op (the
row's own key), so it goes out exactly when that write applies; a TRUNCATE announces
itself on every channel its table's rows can reach.
"""

from __future__ import annotations

import re

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Op, Row
from cdc_cache.core.keys import ESCAPED_VALUE
from cdc_cache.plan.cache_ops import CacheOp, DeleteKey, IndexMember, Notify, SetRow, Truncated
from cdc_cache.plan.rules import KeyTemplate, MissingColumn, NotifyRule, TableRules
from cdc_cache.source.natural import dumps


def changed_columns(before: Row | None, after: Row | None) -> frozenset[str]:
    """Columns whose value differs between the two images (all of them if one is missing)."""
    if before is None or after is None:
        return frozenset((before or {}).keys() | (after or {}).keys())
    return frozenset(c for c in before.keys() | after.keys() if before.get(c) != after.get(c))


def with_notify(ops: list[CacheOp], event: ChangeEvent, table: TableRules) -> list[CacheOp]:
    """``ops`` with the change's notifications right after their host op.

    The host is the last op of the first key rule (the row's own key after the change), so
    the notification goes out exactly when that write applies. A row that moved to another
    channel is announced on both, the old one first.
    """
    rule = table.notify
    if rule is None or not ops:
        return ops
    row = {**event.key, **(event.before or {})} if event.op is Op.DELETE else event.after or {}
    payload = dumps(
        {
            "table": event.table,
            "op": event.op.value,
            "key": dict(event.key),
            "changed": sorted(changed_columns(event.before, event.after)),
            "values": _notified(rule, row, event),
            "position": event.position.encode(),
            "committed_at_ms": event.committed_at_ms,
        }
    )
    channels = [_render_channel(rule.channel, row, event, "after")]
    if event.op is Op.UPDATE and event.before is not None:
        old = _render_channel(rule.channel, event.before, event, "before")
        channels = list(dict.fromkeys([old, *channels]))
    host_key = table.keys[0].template.render(row)
    keyed = [
        (i, op.key) for i, op in enumerate(ops) if isinstance(op, SetRow | DeleteKey | IndexMember)
    ]
    host = next((i for i, key in keyed if key == host_key), keyed[0][0])  # filtered out: next
    notes = [Notify(channel, payload, rule.maxlen) for channel in channels]
    return [*ops[: host + 1], *notes, *ops[host + 1 :]]


def truncated(event: ChangeEvent, table: TableRules) -> Truncated:
    """A TRUNCATE as recorded, with the ``truncate`` message for the table's channels."""
    rule = table.notify
    if rule is None:
        return Truncated()
    payload = {
        "table": event.table,
        "op": "truncate",
        "position": event.position.encode(),
        "committed_at_ms": event.committed_at_ms,
    }
    return Truncated(channel_pattern(rule.channel), dumps(payload), rule.maxlen)


def channel_pattern(template: KeyTemplate) -> str:
    """A regular expression matching every channel ``template`` renders (values escaped)."""
    return "".join(
        re.escape(literal) + (ESCAPED_VALUE if name is not None else "")
        for literal, name in template.pieces
    )


def _render_channel(template: KeyTemplate, row: Row, event: ChangeEvent, image: str) -> str:
    try:
        return template.render(row)
    except MissingColumn as exc:
        msg = (
            f"{event.table} {event.op.value} at {event.position}: channel "
            f"'{template.source}' needs column '{exc.column}', absent from the {image} image"
        )
        raise RenderError(msg) from exc


def _notified(rule: NotifyRule, row: Row, event: ChangeEvent) -> dict[str, object]:
    """The values a notification carries; null for what a key-only delete did not log."""
    if rule.fields is None:
        return dict(row)
    if event.op is Op.DELETE and event.before is None:
        return {name: row.get(name) for name in rule.fields}
    missing = [name for name in rule.fields if name not in row]
    if missing:
        msg = (
            f"{event.table} {event.op.value} at {event.position}: notification on "
            f"'{rule.channel.source}' projects column {missing[0]!r}, absent from the row"
        )
        raise RenderError(msg)
    return {name: row[name] for name in rule.fields}
