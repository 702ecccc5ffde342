"""Index keys (``action: zadd``, ``sadd``): which members a change moves, as plain data.

An index key holds one member per row (``category:{category_id}:by_price`` → ``{id}``
scored by ``price``). A change takes the row's member out of the index its old row
rendered and puts it into the one its new row renders, each op at the change's position:
:class:`~cdc_cache.plan.cache_ops.IndexMember`, gated per (index, member) in Redis.

Why that converges whatever the order: for one (index, member) pair, the newest change
that touches it decides. If the row's last committed image renders that index, the last
change put the member there with its score; if not, the change that took the row out of
it (its before image rendered the index, its after image did not) is newer than every
change that put it there, and no later change of the row names the index. Duplicates
and replays are equal versions; a late older op is stale; a removal leaves a tombstone
(the table's ``tombstone_ttl``), as a key's delete does.

No I/O; raises RenderError when an image lacks a column the index needs.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Op, Row
from cdc_cache.plan.cache_ops import IndexKind, IndexMember
from cdc_cache.plan.rules import Action, KeyRule, MissingColumn, TableRules

Entry = tuple[str, str, str | None]  # (index key, member, score)


def index_ops(rule: KeyRule, event: ChangeEvent, table: TableRules) -> list[IndexMember]:
    """The member ops of index rule ``rule`` for ``event`` (an insert, update, read, delete)."""
    old = _old_entry(rule, event)
    new = None if event.op is Op.DELETE else _entry(rule, event.after or {}, event, "after")
    ops: list[IndexMember] = []
    if old is not None and (new is None or old[:2] != new[:2]):
        ops.append(_op(rule, event, table, old, present=False))
    if new is not None:
        ops.append(_op(rule, event, table, new, present=True))
    return ops


def score_of(value: object) -> str:
    """A column's value as a sorted set's score (what ZADD reads); ValueError if none.

    Integers, floats and decimal text (``"12.50"``, as decimals are cached) score; a
    boolean, NULL, NaN, an infinity or anything else does not.
    """
    if isinstance(value, bool) or value is None:
        msg = f"{value!r} is not a number"
        raise ValueError(msg)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(Decimal(value.strip()))
        except (InvalidOperation, ValueError):
            msg = f"{value!r} is not a number"
            raise ValueError(msg) from None
    else:
        msg = f"{value!r} is not a number"
        raise ValueError(msg)
    if not math.isfinite(number):
        msg = f"{value!r} is not a finite number"
        raise ValueError(msg)
    return repr(number)


def _old_entry(rule: KeyRule, event: ChangeEvent) -> Entry | None:
    """The (index, member) the row was in before the change, if it can have been in one."""
    if event.op in (Op.CREATE, Op.READ):
        return None
    if event.before is not None:
        return _entry(rule, {**event.key, **event.before}, event, "before")
    assert rule.member is not None
    needed = (*rule.template.columns, *rule.member.columns)
    if event.op is Op.DELETE:
        return _entry(rule, event.key, event, "before")
    if all(column in event.key for column in needed):
        return None  # its index and member did not change: the new entry replaces it
    missing = ", ".join(repr(c) for c in needed if c not in event.key)
    msg = (
        f"{event.table} update at {event.position} has no before image, but index "
        f"'{rule.template.source}' needs {missing} of the old row; set REPLICA IDENTITY "
        "FULL on the table (PostgreSQL)"
    )
    raise RenderError(msg)


def _entry(rule: KeyRule, row: Row, event: ChangeEvent, image: str) -> Entry:
    assert rule.member is not None
    try:
        key = rule.template.render(row)
        member = rule.member.render(row)
    except MissingColumn as exc:
        msg = (
            f"{event.table} {event.op.value} at {event.position}: index "
            f"'{rule.template.source}' needs column '{exc.column}', absent from the "
            f"{image} image"
        )
        raise RenderError(msg) from exc
    if rule.score is None or image == "before":
        return key, member, None
    if rule.score not in row:
        msg = (
            f"{event.table} {event.op.value} at {event.position}: index "
            f"'{rule.template.source}' scores by column '{rule.score}', absent from the row"
        )
        raise RenderError(msg)
    try:
        return key, member, score_of(row[rule.score])
    except ValueError as exc:
        msg = (
            f"{event.table} {event.op.value} at {event.position}: index "
            f"'{rule.template.source}' scores by column '{rule.score}': {exc}"
        )
        raise RenderError(msg) from None


def index_kind(rule: KeyRule) -> IndexKind:
    """The Redis type of an index rule's keys: a sorted set for zadd, a set for sadd."""
    return IndexKind.ZSET if rule.action is Action.ZADD else IndexKind.SET


def _op(
    rule: KeyRule, event: ChangeEvent, table: TableRules, entry: Entry, *, present: bool
) -> IndexMember:
    key, member, score = entry
    return IndexMember(
        key,
        member,
        score if present else None,
        present,
        event.position,
        rule.ttl_ms,
        table.tombstone_ttl_ms,
        index_kind(rule),
        event.table,
        rebuild=event.op is Op.READ,
    )
