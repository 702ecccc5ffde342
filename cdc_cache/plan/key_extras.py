"""What a rule may add to a plain key, as plain frozen data.

A filter, renamed and computed fields, a TTL per row, refresh-only writes, and what a
table's snapshot rows do.

A rule without any of them carries no :class:`KeyExtras` (None), so the planner's plain
path stays as fast as before; the expressions are compiled when the rules load
(:mod:`cdc_cache.plan.expressions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cdc_cache.plan.expressions import Expression


class Snapshot(StrEnum):
    """What a table's snapshot rows (``op r``) do: write their keys, delete them, or nothing."""

    WRITE = "write"
    INVALIDATE = "invalidate"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a key's value: a column under its own or another ``name``, or computed."""

    name: str
    column: str | None
    expr: Expression | None = None


@dataclass(frozen=True, slots=True)
class RowTtl:
    """A TTL read from the row: seconds to live, or (``until``) the time the row expires.

    ``until`` values are epoch milliseconds (numbers) or ISO-8601 times (naive ones are UTC).
    """

    expr: Expression
    until: bool


@dataclass(frozen=True, slots=True)
class KeyExtras:
    """What a set key does beyond projecting columns; None on a plain rule (the fast path).

    ``when``: the key exists only for rows it matches. ``projection``: renamed and computed
    fields. ``ttl``: a TTL per row, bounded by the rule's ``ttl_ms``. ``only_if_cached``:
    a write lands only on a key that is cached (refresh, never fill).
    """

    when: Expression | None = None
    projection: tuple[Field, ...] | None = None
    ttl: RowTtl | None = None
    only_if_cached: bool = False
