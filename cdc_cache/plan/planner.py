"""Plan: a pure function from one change event and the rules to cache operations.

No I/O. Every decision that makes the cache correct lives here and is tested without
servers: which keys a change touches, moves between keys, watched columns, TRUNCATE
(its notifications are planned in :mod:`cdc_cache.plan.notifications`).
The images it gets hold the values as the table caches them (natural values once
:meth:`~cdc_cache.source.natural.TableValues.event` decoded them); :func:`encode` is the one
serializer of a row for a key, shared with application fills (``cdc_cache.aside.fill``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from functools import partial

from cdc_cache.core.errors import MissingPrimaryKey, RenderError
from cdc_cache.core.events import ChangeEvent, Op, Row
from cdc_cache.plan.cache_ops import (
    CacheOp,
    DeleteKey,
    InvalidatePrefix,
    SetRow,
    ValueFormat,
    as_invalidation,
)
from cdc_cache.plan.extended import FieldFailed, compute, failure, plan_extended
from cdc_cache.plan.indexes import index_ops
from cdc_cache.plan.key_extras import Snapshot
from cdc_cache.plan.notifications import truncated, with_notify
from cdc_cache.plan.rules import (
    Action,
    KeyRule,
    MissingColumn,
    Rules,
    TableRules,
)
from cdc_cache.source.natural import dumps


def plan(event: ChangeEvent, rules: Rules) -> list[CacheOp]:
    """Cache operations for ``event``.

    Empty when the table is not covered or no watched column changed. Raises a poison
    error (RenderError, MissingPrimaryKey) when the rules cannot be applied to this row:
    that change must be set aside loudly, never dropped.
    """
    table = rules.for_table(event.table)
    if table is None:
        return []
    if event.op is Op.TRUNCATE:
        prefixes = [
            InvalidatePrefix(prefix, event.table, event.position, table.tombstone_ttl_ms)
            for prefix in table.truncate_prefixes
        ]
        if not prefixes:  # no keys of its own: only the keys that depend on it (dependencies)
            return []
        first, *rest = prefixes
        return [replace(first, truncated=truncated(event, table)), *rest]
    if not event.key:
        msg = f"{event.table} {event.op.value} at {event.position} has no primary key"
        raise MissingPrimaryKey(msg)
    if event.op is Op.DELETE:
        return with_notify(_plan_delete(event, table), event, table)
    if event.after is None:
        msg = f"{event.table} {event.op.value} at {event.position} has no after image"
        raise RenderError(msg)
    if event.op is Op.UPDATE and not watched_change(event, table):
        return []
    if event.op is Op.READ and table.snapshot is not Snapshot.WRITE:
        if table.snapshot is Snapshot.SKIP:
            return []
        ops: list[CacheOp] = [
            as_invalidation(op) if isinstance(op, SetRow) else op
            for op in _plan_upsert(event, table, event.after)
        ]
        return with_notify(ops, event, table)
    return with_notify(_plan_upsert(event, table, event.after), event, table)


def watched_change(event: ChangeEvent, table: TableRules) -> bool:
    """Whether a watched column changed (``watch ∩ changed_columns`` is not empty).

    Checked over the few watched columns instead of building the set of changed ones.
    """
    before, after = event.before, event.after
    if table.watch is None or before is None or after is None:
        return True
    for column in table.watch:  # noqa: SIM110 - a loop is faster than any(genexpr) here
        if before.get(column) != after.get(column):
            return True
    return False


def _plan_upsert(event: ChangeEvent, table: TableRules, after: Row) -> list[CacheOp]:
    ops: list[CacheOp] = []
    for rule in table.keys:
        if rule.member is not None:  # an index key (zadd, sadd)
            ops.extend(index_ops(rule, event, table))
            continue
        new_key = _render(rule, after, event, "after")
        old_key = _old_key(rule, event) if event.op is Op.UPDATE else None
        if rule.extras is not None:
            build = partial(_set_row, rule, new_key, after, event, table)
            ops += plan_extended(rule.extras, event, table, (new_key, old_key), build)
            continue
        if old_key is not None and old_key != new_key:
            ops.append(DeleteKey(old_key, event.position, table.tombstone_ttl_ms, event.table))
        if rule.action is Action.SET:
            ops.append(_set_row(rule, new_key, after, event, table))
        else:
            ops.append(DeleteKey(new_key, event.position, table.tombstone_ttl_ms, event.table))
    return ops


def _plan_delete(event: ChangeEvent, table: TableRules) -> list[CacheOp]:
    # PostgreSQL without REPLICA IDENTITY FULL logs only the key columns of a deleted row
    # (the decoder drops the rest of such a before image: cdc_cache.source.envelope).
    before = {**event.key, **(event.before or {})}
    image = "before" if event.before is not None else _KEY_ONLY
    keys = (_render(rule, before, event, image) for rule in table.keys if rule.member is None)
    ops: list[CacheOp] = [
        DeleteKey(key, event.position, table.tombstone_ttl_ms, event.table)
        for key in dict.fromkeys(keys)
    ]
    for rule in table.keys:
        if rule.member is not None:  # an index key (zadd, sadd)
            ops.extend(index_ops(rule, event, table))
    return ops


def _old_key(rule: KeyRule, event: ChangeEvent) -> str | None:
    """The key the row had before an update, so a row that moved leaves nothing behind."""
    if event.before is not None:
        return _render(rule, event.before, event, "before")
    if all(column in event.key for column in rule.template.columns):
        return None  # the key columns did not change, so neither did the key
    msg = (
        f"{event.table} update at {event.position} has no before image, but key "
        f"'{rule.template.source}' needs {_non_key_columns(rule, event)} of the old row; "
        "set REPLICA IDENTITY FULL on the table (PostgreSQL)"
    )
    raise RenderError(msg)


def _non_key_columns(rule: KeyRule, event: ChangeEvent) -> str:
    return ", ".join(repr(c) for c in rule.template.columns if c not in event.key)


_KEY_ONLY = (
    "before image, which holds only the primary key (PostgreSQL without REPLICA IDENTITY "
    "FULL: set it on the table)"
)


def _render(rule: KeyRule, row: Row, event: ChangeEvent, image: str) -> str:
    try:
        return rule.template.render(row)
    except MissingColumn as exc:
        msg = (
            f"{event.table} {event.op.value} at {event.position}: key "
            f"'{rule.template.source}' needs column '{exc.column}', absent from the "
            + (image if image is _KEY_ONLY else f"{image} image")
        )
        raise RenderError(msg) from exc


def _set_row(rule: KeyRule, key: str, after: Row, event: ChangeEvent, table: TableRules) -> SetRow:
    try:
        value = encode(rule, after)
    except FieldFailed as exc:
        raise failure(event, table, exc.expr, after)(exc.error) from None
    except MissingColumn as exc:
        msg = (
            f"{event.table} {event.op.value} at {event.position}: key "
            f"'{rule.template.source}' projects column {exc.column!r}, absent from the row"
        )
        raise RenderError(msg) from exc
    return SetRow(
        key, event.position, value, rule.format, rule.ttl_ms, table.tombstone_ttl_ms, event.table
    )


def encode(rule: KeyRule, row: Row) -> bytes | tuple[tuple[str, str], ...]:
    """What ``rule`` stores for ``row``: its JSON document, or its hash fields.

    Raises MissingColumn when the rule projects a column the row does not carry, and
    FieldFailed when a computed field cannot be computed for it.
    """
    extras = rule.extras
    if extras is not None and extras.projection is not None:
        projected = compute(extras.projection, row)
    else:
        projected = _project(rule.fields, row)
    if rule.format is ValueFormat.JSON:
        return dumps(projected)
    return tuple((name, _hash_field(v)) for name, v in projected.items() if v is not None)


def _project(fields: Iterable[str] | None, row: Row) -> Row:
    if fields is None:
        return row
    try:
        return {name: row[name] for name in fields}
    except KeyError as exc:
        raise MissingColumn(exc.args[0]) from None


def _hash_field(value: object) -> str:
    if isinstance(value, str):
        return value
    return dumps(value).decode()
