"""What a key should hold for a row, judged against what it holds (pure but for the clock).

A row whose TTL ends at a time it names (``ttl: {until: ...}``) is judged against the clock.

Expected values come from :func:`cdc_cache.plan.planner.plan` applied to a snapshot-read
event of the row, so the judge can never disagree with the worker about projection or
serialisation. A row is read as the table caches it: decoded (rules version 2, through
:meth:`~cdc_cache.source.natural.TableValues.driver_row`, as a fill reads it) or re-encoded
as Debezium ships it (:func:`debezium_value`). ``cdc-cache verify`` (``tools.verify``) and
the consistency inspector both judge through here.
"""

from __future__ import annotations

import base64
import datetime as dt
import operator
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Literal, TypeVar
from urllib.parse import unquote_to_bytes

import orjson

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Op, Row
from cdc_cache.core.keys import NULL_TOKEN
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, IndexMember, Notify, SetRow, as_invalidation
from cdc_cache.plan.key_extras import Snapshot
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules import KeyRule, Rules, TableRules
from cdc_cache.sink.versions import is_delete
from cdc_cache.source.natural import TableValues, cursor_types

Dialect = Literal["mysql", "postgresql"]

_EPOCH: Final = dt.date(1970, 1, 1)
_EPOCH_DT: Final = dt.datetime(1970, 1, 1)  # noqa: DTZ001 - naive on purpose: DATETIME columns
_ESCAPED: Final = "[A-Za-z0-9._@%~-]*"  # what keys.escape_value can produce
_ANY_POSITION: Final = SourcePosition(0, 0, 0, 0)
# PyMySQL's type code of TIMESTAMP columns, which Debezium ships as an ISO string in UTC.
_MYSQL_TIMESTAMP: Final = 7


class Finding(StrEnum):
    """What is wrong with one cache key."""

    STALE = "stale"
    UNEXPECTED = "unexpected"
    MISSING = "missing"
    VERSION = "version"


FAILING: Final = frozenset({Finding.STALE, Finding.UNEXPECTED})

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Settling:
    """How a difference is re-checked before it is reported.

    ``retries`` times, ``delay_s`` apart, so a change still in flight (committed, not yet
    applied) is no false alarm.
    """

    retries: int
    delay_s: float
    sleep: Callable[[float], None]

    def settled(
        self, found: _T, again: Callable[[_T], _T], quiet: Callable[[_T], bool] = operator.not_
    ) -> _T:
        """``found`` re-checked by ``again`` until ``quiet`` or the retries run out.

        ``quiet`` says nothing is left to report (by default: ``found`` is empty).
        """
        for _ in range(self.retries):
            if quiet(found):
                break
            self.sleep(self.delay_s)
            found = again(found)
        return found


def debezium_value(value: Any, dialect: Dialect, *, timestamp: bool = False) -> Any:
    """A database driver's value as Debezium's JSON converter ships it.

    Assumes the connector settings of ``cdc_cache.tools.devstack.debezium`` (decimals as strings,
    default temporal precision): DECIMAL → plain string, DATE → days since epoch, MySQL
    DATETIME → epoch ms, PostgreSQL TIMESTAMP → epoch µs, TIME → µs since midnight,
    TIMESTAMP WITH TIME ZONE / MySQL TIMESTAMP (``timestamp``) → ISO-8601 UTC, binary →
    base64. Other values are passed through.
    """
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None or timestamp:
            utc = value.replace(tzinfo=value.tzinfo or dt.UTC).astimezone(dt.UTC)
            return utc.isoformat().replace("+00:00", "Z")
        delta = value - _EPOCH_DT
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return micros // 1000 if dialect == "mysql" else micros
    if isinstance(value, dt.date):
        return (value - _EPOCH).days
    if isinstance(value, dt.timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if isinstance(value, dt.time):
        return (
            (value.hour * 60 + value.minute) * 60 + value.second
        ) * 1_000_000 + value.microsecond
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return value


def as_cached(
    row: Mapping[str, Any], cursor: Any, shape: TableValues | None, dialect: Dialect
) -> dict[str, Any]:
    """A row as ``cursor`` returned it, with its values as ``shape`` caches them.

    Decoded (:meth:`~cdc_cache.source.natural.TableValues.driver_row`), or as Debezium ships them
    when ``shape`` is None or a table of rules version 1. ``cursor`` is PyMySQL's or
    psycopg's, its session in UTC.
    """
    if shape is not None and shape.natural:
        return shape.driver_row(row, cursor_types(cursor))
    stamps = {
        d[0] for d in cursor.description or () if dialect == "mysql" and d[1] == _MYSQL_TIMESTAMP
    }
    return {
        name: debezium_value(value, dialect, timestamp=name in stamps)
        for name, value in row.items()
    }


@dataclass(frozen=True, slots=True)
class Derived:
    """The keys one row yields: values for ``set`` rules, names for ``delete`` rules.

    ``members``: the row's member of each index rule (zadd, sadd), with its score.
    ``unrenderable``: why the rules cannot render the row (then it yields nothing: the
    worker dead-letters such a change, ``render_failed``, and deletes the keys it renders).
    """

    sets: tuple[tuple[KeyRule, SetRow], ...]
    deletes: tuple[str, ...]
    members: tuple[tuple[KeyRule, IndexMember], ...] = ()
    unrenderable: str | None = None


def snapshot_read(
    table: TableRules,
    row: Row,
    primary_key: Sequence[str],
    position: SourcePosition = _ANY_POSITION,
) -> ChangeEvent:
    """``row`` as the change a snapshot of it would be (``op r``), at ``position``."""
    return ChangeEvent(
        table=table.table,
        op=Op.READ,
        before=None,
        after=row,
        key={column: row[column] for column in primary_key},
        position=position,
        committed_at_ms=None,
        snapshot=True,
    )


def derive(
    table: TableRules,
    row: Row,
    primary_key: Sequence[str],
    position: SourcePosition = _ANY_POSITION,
    now_ms: float | None = None,
) -> Derived:
    """What the worker would write for ``row``, via the planner, as a snapshot read.

    ``row`` holds the values as the table caches them (natural values, or Debezium's wire
    values for a table cached as shipped): :meth:`Database.rows` reads them so.
    ``position`` is the read's (a repair's; any position when only values are compared).
    Whatever the table does with snapshot rows, this is what its changes write; a row
    that expired by ``now_ms`` (default: the clock now) renders a delete, as the writer
    turns it into one.
    """
    table = replace(table, snapshot=Snapshot.WRITE)
    now = time.time() * 1000 if now_ms is None else now_ms
    event = snapshot_read(table, row, primary_key, position)
    try:
        planned = plan(event, Rules({table.table: table}))
    except RenderError as exc:
        return Derived((), (), unrenderable=exc.reason)
    # A snapshot read yields exactly one op per key rule, in rule order (notifications aside).
    ops = [
        as_invalidation(op) if isinstance(op, SetRow) and 0 < op.expires_at_ms <= now else op
        for op in planned
        if not isinstance(op, Notify)
    ]
    pairs = list(zip(table.keys, ops, strict=True))
    return Derived(
        sets=tuple((rule, op) for rule, op in pairs if isinstance(op, SetRow)),
        deletes=tuple(op.key for _, op in pairs if isinstance(op, DeleteKey)),
        members=tuple((rule, op) for rule, op in pairs if isinstance(op, IndexMember)),
    )


@dataclass(frozen=True, slots=True)
class Stored:
    """What Redis holds for one key: the value (absent: None) and its version."""

    value: bytes | Mapping[str, str] | None
    version: str | None = None
    wrong_type: bool = False

    @property
    def present(self) -> bool:
        return self.wrong_type or self.value is not None


def same_value(expected: SetRow, stored: bytes | Mapping[str, str]) -> bool:
    """Whether a stored value equals the projection (JSON compared as documents)."""
    if isinstance(expected.value, tuple):
        return isinstance(stored, Mapping) and dict(stored) == dict(expected.value)
    if not isinstance(stored, bytes):
        return False
    try:
        return bool(orjson.loads(stored) == orjson.loads(expected.value))
    except orjson.JSONDecodeError:
        return False


def judge(expected: SetRow | None, stored: Stored) -> Finding | None:
    """The finding for one key, given what its row implies (None: no row renders it)."""
    if expected is None:
        return Finding.UNEXPECTED if stored.present else None
    if not stored.present:
        return None if expected.only_if_cached else Finding.MISSING  # never filled: fine
    if stored.wrong_type or stored.value is None or not same_value(expected, stored.value):
        return Finding.STALE
    if stored.version is None or is_delete(stored.version):
        return Finding.VERSION
    return None


@dataclass(frozen=True, slots=True)
class KeyPattern:
    """A ``set`` template compiled back into a parser of the keys it renders."""

    rule: KeyRule
    regex: re.Pattern[str]

    @classmethod
    def of(cls, rule: KeyRule) -> KeyPattern:
        parts = [
            re.escape(literal) + (f"({_ESCAPED})" if name is not None else "")
            for literal, name in rule.template.pieces
        ]
        return cls(rule, re.compile("".join(parts)))

    def parse(self, key: str) -> dict[str, str | None] | None:
        """Column values a key was rendered from: text, None for NULL, or None if not ours.

        Values shortened to a digest cannot be read back; their columns are left out.
        """
        match = self.regex.fullmatch(key)
        if match is None:
            return None
        values: dict[str, str | None] = {}
        for column, text in zip(self.rule.template.columns, match.groups(), strict=True):
            if text == NULL_TOKEN:
                values[column] = None
            elif NULL_TOKEN not in text:
                values[column] = unquote_to_bytes(text).decode("utf-8", "replace")
        return values


def describe(finding: Finding | None, expected: SetRow | None, stored: Stored) -> str:
    if finding is Finding.UNEXPECTED:
        return "no row renders this key"
    if finding is Finding.MISSING:
        return f"absent (version {stored.version or 'none'})"
    if finding is Finding.VERSION:
        return f"value present, version {stored.version or 'missing'}"
    if finding is Finding.STALE and expected is not None:
        shown = "a value of the wrong type" if stored.wrong_type else _short(stored.value)
        return f"holds {shown}, row gives {_short(expected.value)}"
    return "consistent"


def _short(value: object, limit: int = 160) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
