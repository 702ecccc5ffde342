"""Source log positions: the idempotency key of every cache write.

A position is totally ordered within one source lineage. Kafka offsets are no part of it,
because one cache key can be fed by several topics and partitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import orjson

_BINLOG_FILE = re.compile(r"\.(\d+)$")

# Fixed widths so that the encoded form compares lexicographically in the same order as the
# tuple: the Lua apply script compares positions as plain strings.
_WIDTHS: Final = (5, 20, 20, 10)
ENCODED_LENGTH: Final = sum(_WIDTHS) + len(_WIDTHS) - 1
MAX_EPOCH: Final = 10 ** _WIDTHS[0] - 1
_LIMITS: Final = tuple(10**w for w in _WIDTHS)
_ENCODING: Final = ".".join(f"{{:0{w}d}}" for w in _WIDTHS)


class SourceKind(StrEnum):
    """Which database log a position comes from."""

    BINLOG = "binlog"
    POSTGRES = "postgres"


class PositionError(ValueError):
    """The source block of an envelope does not carry a usable position."""


@dataclass(order=True, slots=True)  # not frozen: one per change, and frozen fields cost 3x to set
class SourcePosition:
    """A point in a source's change log: ``(epoch, major, minor, row)``, compared as a tuple.

    MySQL/MariaDB binlog: major = binlog file sequence, minor = event position, row = row
    within the event. PostgreSQL: major = last commit LSN, minor = event LSN (the pair from
    ``source.sequence``, which increases in stream order), row = 0. ``epoch`` is set by the
    operator and bumped after a failover to a server with a new log lineage.
    """

    epoch: int
    major: int
    minor: int
    row: int
    kind: SourceKind = field(default=SourceKind.BINLOG, compare=False)

    def __post_init__(self) -> None:
        # One chained comparison per field: this runs for every change event.
        if (
            0 <= self.epoch < _LIMITS[0]
            and 0 <= self.major < _LIMITS[1]
            and 0 <= self.minor < _LIMITS[2]
            and 0 <= self.row < _LIMITS[3]
        ):
            return
        for name, limit in zip(("epoch", "major", "minor", "row"), _LIMITS, strict=True):
            value = getattr(self, name)
            if not 0 <= value < limit:
                msg = f"position field {name}={value} is outside 0..{limit - 1}"
                raise PositionError(msg)

    def __hash__(self) -> int:  # as a frozen dataclass's: positions key dicts (never mutated)
        return hash((self.epoch, self.major, self.minor, self.row))

    def encode(self) -> str:
        """Return the fixed-width string stored next to each cache key in Redis."""
        return _ENCODING.format(self.epoch, self.major, self.minor, self.row)

    @classmethod
    def decode(cls, text: str | bytes) -> SourcePosition:
        """Parse the form produced by :meth:`encode` (kind is not stored and reads as binlog)."""
        raw = text.decode() if isinstance(text, bytes) else text
        parts = raw.split(".")
        if len(parts) != len(_WIDTHS) or len(raw) != ENCODED_LENGTH:
            msg = f"not an encoded source position: {raw!r}"
            raise PositionError(msg)
        epoch, major, minor, row = (int(p) for p in parts)
        return cls(epoch, major, minor, row)

    def __str__(self) -> str:
        if self.kind is SourceKind.POSTGRES:
            return f"pg:{self.epoch}/{self.major}/{self.minor}"
        return f"binlog:{self.epoch}/{self.major}:{self.minor}#{self.row}"


def binlog_position(source: dict[str, object], epoch: int = 0) -> SourcePosition:
    """Build a position from a MySQL/MariaDB envelope's ``source`` block."""
    file = source.get("file")
    if not isinstance(file, str) or not (match := _BINLOG_FILE.search(file)):
        msg = f"source.file {file!r} is not a binlog file name like 'mysql-bin.000042'"
        raise PositionError(msg)
    pos = _int_field(source, "pos")
    row = _int_field(source, "row", default=0)
    return SourcePosition(epoch, int(match.group(1)), pos, row, SourceKind.BINLOG)


def postgres_position(source: dict[str, object], epoch: int = 0) -> SourcePosition:
    """Build a position from a PostgreSQL envelope's ``source.sequence`` (and ``lsn``)."""
    sequence = source.get("sequence")
    commit_lsn: int | None = None
    event_lsn: int | None = None
    if isinstance(sequence, str):
        # The connector ships the sequence as a JSON array of two LSN strings (or nulls).
        try:
            items = orjson.loads(sequence)
        except orjson.JSONDecodeError as exc:
            msg = f"source.sequence {sequence!r} is not a JSON array"
            raise PositionError(msg) from exc
        if isinstance(items, list) and len(items) == 2:
            commit_lsn = _lsn(items[0])
            event_lsn = _lsn(items[1])
    if event_lsn is None:
        event_lsn = _int_field(source, "lsn")
    if commit_lsn is None:
        # Snapshot reads carry no commit LSN: the snapshot's LSN orders them.
        commit_lsn = event_lsn
    return SourcePosition(epoch, commit_lsn, event_lsn, 0, SourceKind.POSTGRES)


def _int_field(source: dict[str, object], name: str, default: int | None = None) -> int:
    value = source.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit():
            return int(value)
        msg = f"source.{name} is {value!r}, expected a non-negative integer"
        raise PositionError(msg)
    return value


def _lsn(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    msg = f"LSN {value!r} in source.sequence is not a number"
    raise PositionError(msg)
