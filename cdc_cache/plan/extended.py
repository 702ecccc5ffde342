"""Planning a set key with a filter, computed fields, a TTL per row or refresh-only writes.

Such a rule carries :class:`~cdc_cache.plan.key_extras.KeyExtras`.

Pure like the planner, which hands such rules here and keeps its plain path as it was.
Why filters converge under reordering: the key is written when the after image matches
(and has not expired), and the before image's key is deleted, version-gated, when the
before image matched and the row stopped matching, expired or moved. Whatever the order
of delivery, the newest event that touches the key is then the one of the row's last
image that matched (a set), or the one right after it (a delete): a late older write
finds a newer version. A before image that is missing (a snapshot row, PostgreSQL without
REPLICA IDENTITY FULL) or cannot be judged counts as matching: a delete is always safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Op, Row
from cdc_cache.plan.cache_ops import CacheOp, DeleteKey, SetRow
from cdc_cache.plan.expressions import Expression, ExpressionFailed
from cdc_cache.plan.key_extras import Field, KeyExtras
from cdc_cache.plan.row_ttl import row_ttl
from cdc_cache.plan.rules import MissingColumn, TableRules


def plan_extended(
    extras: KeyExtras,
    event: ChangeEvent,
    table: TableRules,
    keys: tuple[str, str | None],
    set_row: Callable[[], SetRow],
) -> list[CacheOp]:
    """The ops of one such key: ``keys`` are its key now and before (None: unchanged).

    ``set_row`` builds the write of the after image (raising the rule's render errors).
    """
    after = event.after or {}
    new_key, old_key = keys
    before_key = old_key if old_key is not None else new_key
    matches = extras.when is None or _judge(extras.when, after, event, table)
    was = event.op is not Op.CREATE and (
        extras.when is None or event.before is None or _judged_before(extras.when, event.before)
    )
    op: SetRow | None = None
    if matches:
        op = set_row()
        if extras.ttl is not None:
            op = row_ttl(op, extras.ttl, after, failure(event, table, extras.ttl.expr, after))
    ops: list[CacheOp] = []
    if was and (op is None or before_key != new_key):
        ops.append(DeleteKey(before_key, event.position, table.tombstone_ttl_ms, event.table))
    if op is not None:
        ops.append(replace(op, only_if_cached=True) if extras.only_if_cached else op)
    return ops


def _judge(when: Expression, row: Row, event: ChangeEvent, table: TableRules) -> bool:
    """Whether ``row`` matches the filter; a filter that cannot be evaluated is poison."""
    try:
        return bool(when.evaluate(row))
    except ExpressionFailed as exc:
        raise failure(event, table, when, row)(exc) from None


def _judged_before(when: Expression, before: Row) -> bool:
    """Whether the before image matched; unknown counts as matched (its key is deleted)."""
    try:
        return bool(when.evaluate(before))
    except ExpressionFailed:
        return True


def failure(
    event: ChangeEvent, table: TableRules, expr: Expression, row: Row
) -> Callable[[Exception], RenderError]:
    """Builds the poison error of ``expr`` failing on ``row``: the expression and values.

    Sensitive columns show as ``***``.
    """

    def failed(exc: Exception) -> RenderError:
        return RenderError(
            f"{event.table} {event.op.value} at {event.position}: expression "
            f"{expr.describe(row, table.sensitive)} failed: {exc}"
        )

    return failed


def _field_value(value: object) -> object:
    """A computed value as a field holds it: a decimal as its exact text, like a column's."""
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    msg = f"gives a {type(value).__name__}; a field holds a number, text, true/false or null"
    raise ExpressionFailed(msg)


class FieldFailed(Exception):
    """A computed field's expression failed for a row."""

    def __init__(self, expr: Expression, error: ExpressionFailed) -> None:
        self.expr = expr
        self.error = error
        super().__init__(f"{expr.source}: {error}")


def compute(projection: tuple[Field, ...], row: Row) -> Row:
    """The value of a key with renamed or computed fields, in the order the rule lists them.

    Raises MissingColumn for a column the row lacks, FieldFailed for an expression that fails.
    """
    out: dict[str, object] = {}
    for item in projection:
        if item.expr is not None:
            try:
                out[item.name] = _field_value(item.expr.evaluate(row))
            except ExpressionFailed as exc:
                raise FieldFailed(item.expr, exc) from None
        elif item.column is not None:
            if item.column not in row:
                raise MissingColumn(item.column)
            out[item.name] = row[item.column]
    return out
