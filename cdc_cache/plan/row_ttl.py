"""A TTL per row: how long a written key lives, read from the row by an expression.

``ttl: {seconds: EXPR}`` gives the seconds to live; ``ttl: {until: EXPR}`` the time the
row expires, as epoch milliseconds (a number) or an ISO-8601 time (a string; without an
offset it is UTC). Either only shortens the rule's TTL (the safety TTL), and the TTL
fallback mode shortens it further (the shorter always wins). A NULL value leaves the
rule's TTL. A row whose seconds are not positive is planned like a row that stopped
matching (its key is deleted, version-gated); an ``until`` is turned into a TTL by the
writer with the wall clock at apply time, which deletes the key when it has passed
(see :mod:`cdc_cache.sink.writer`): the planner stays free of clocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import Row
from cdc_cache.plan.cache_ops import SetRow
from cdc_cache.plan.expressions import ExpressionFailed
from cdc_cache.plan.key_extras import RowTtl


def row_ttl(
    op: SetRow, ttl: RowTtl, row: Row, failed: Callable[[Exception], RenderError]
) -> SetRow | None:
    """``op`` with the row's TTL, or None when the row has already expired (seconds <= 0).

    Raises what ``failed`` makes of an expression that fails or gives no time.
    """
    try:
        value = ttl.expr.evaluate(row)
        if value is None:
            return op
        if ttl.until:
            return replace(op, expires_at_ms=max(1, epoch_ms(value)))
        ms = int(_number(value) * 1000)
    except (ExpressionFailed, ValueError) as exc:
        raise failed(exc) from None
    if ms <= 0:
        return None
    return replace(op, ttl_ms=min(op.ttl_ms, ms))


def epoch_ms(value: object) -> int:
    """``value`` as epoch milliseconds: a number of them, an ISO-8601 time or a datetime."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    if isinstance(value, str):
        try:
            return epoch_ms(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            msg = f"{value!r} is not an ISO-8601 time"
            raise ValueError(msg) from None
    return int(_number(value))


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        msg = f"{value!r} ({type(value).__name__}) is not a number"
        raise ValueError(msg)
    return float(value)
