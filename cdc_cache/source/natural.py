"""Column values in the application's shape: one rendering for the worker and for fills.

The worker sees each column as Debezium ships it (the *wire* value, its logical type from
the record's schema or the rules, see :mod:`cdc_cache.core.logical`); an application filling
the same key sees it as its database driver returns it (``datetime``, ``Decimal``,
``dict``, ``UUID``...). Both are turned into the same *natural* value here, so a key
holds the same bytes whoever wrote it last:

============================  ==================================================
DATE                          ``"2024-02-29"``
TIME                          ``"13:14:15.678000"`` (microseconds only when not 0)
DATETIME / TIMESTAMP          ``"2024-02-29T13:14:15.678000"``, or epoch ms
TIMESTAMP (MySQL), TIMESTAMPTZ ``"2024-02-29T12:14:15.678000Z"`` (UTC), or epoch ms
TIMETZ                        ``"12:14:15.500000Z"`` (UTC)
INTERVAL                      ``"P1DT2H3M4.5S"``
DECIMAL / NUMERIC             ``"12.50"`` (exact, the column's scale), or ``12.50``
JSON / JSONB                  the document
BOOLEAN, TINYINT(1) declared  ``true`` / ``false``
BIT(n)                        ``"10101"``
REAL / FLOAT                  the shortest decimal of the 32-bit float
GEOMETRY, POINT               WKT: ``"POINT(1.5 2)"``
UUID, ENUM, SET, text, ints   as they are; bytes as base64 (as on the wire)
============================  ==================================================

The choices a rules file makes (:class:`Rendering`: decimals as strings or numbers,
timestamps as ISO text or epoch milliseconds, a column kept as on the wire) apply alike
to both sides. Pure: no I/O.

Kept in one module: the wire and the driver conversion of each type stand side by side,
so both sides of the contract above change together.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

import orjson

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Row
from cdc_cache.core.logical import ColumnType, Kind, RowTypes
from cdc_cache.source.avro import float32
from cdc_cache.source.wkb import mysql_wkt, number, wkt


class Values(StrEnum):
    """Whether a table's values are decoded or cached as Debezium ships them."""

    NATURAL = "natural"
    WIRE = "wire"


class Decimals(StrEnum):
    """How exact decimals are written: JSON strings (``"12.50"``) or numbers (``12.50``)."""

    STRING = "string"
    NUMBER = "number"


class Timestamps(StrEnum):
    """How date-times are written: ISO-8601 text or milliseconds since the epoch."""

    ISO = "iso"
    EPOCH_MS = "epoch_ms"


WIRE_CHOICE: Final = "wire"  # a column's rendering choice: keep it as Debezium ships it


@dataclass(frozen=True, slots=True)
class Rendering:
    """The output choices for one column."""

    decimals: Decimals = Decimals.STRING
    timestamps: Timestamps = Timestamps.ISO
    wire: bool = False

    def choose(self, choice: str) -> Rendering:
        """A copy with one choice (``number``, ``epoch_ms``, ``wire``...) applied."""
        if choice == WIRE_CHOICE:
            return Rendering(self.decimals, self.timestamps, wire=True)
        if choice in (Decimals.STRING, Decimals.NUMBER):
            return Rendering(Decimals(choice), self.timestamps)
        return Rendering(self.decimals, Timestamps(choice))


RENDER_CHOICES: Final = (
    *(d.value for d in Decimals),
    *(t.value for t in Timestamps),
    WIRE_CHOICE,
)


class JsonNumber(str):
    """An exact decimal written as a JSON number: ``12.50``, not ``"12.50"``.

    Its text is the digits, so it reads the same in keys and hash fields, and two values
    compare as text (``1.50`` and ``1.5`` differ, as the cached bytes do).
    """

    __slots__ = ()


def _default(value: object) -> Any:
    if isinstance(value, JsonNumber):
        return orjson.Fragment(str.__str__(value).encode())
    msg = f"{type(value).__name__} is not JSON serializable"
    raise TypeError(msg)


def dumps(value: object) -> bytes:
    """``value`` as the JSON the cache holds (exact decimals as numbers when chosen).

    Copied to its own size: orjson hands back its working buffer, at least 4 KiB, as the
    bytes object (an 82-byte value holds 4,098 bytes), and the worker keeps thousands of
    values in flight between planning and Redis (100,000 of them: 393 MiB of RSS).
    """
    encoded = orjson.dumps(value, default=_default, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    return bytes(memoryview(encoded))


# --------------------------------------------------------------------------- formats

_EPOCH_DAY: Final = dt.date(1970, 1, 1).toordinal()
_EPOCH: Final = dt.datetime(1970, 1, 1)  # noqa: DTZ001 - naive: DATETIME values have no zone
_UTC_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DAY_US: Final = 86_400_000_000
_MS: Final = dt.timedelta(milliseconds=1)
# PostgreSQL's +/-infinity timestamps, as Debezium ships them.
_INFINITY: Final = {9223372036825200000: "infinity", -9223372036832400000: "-infinity"}
_DECIMAL_TEXT: Final = re.compile(r"^-?\d+(\.\d+)?$")
MAX_DECIMAL_SCALE: Final = 16_383
"""The largest scale, either way, a decimal may say it has: PostgreSQL's largest (its
NUMERIC scales lie in -1000..16383, MySQL's in 0..30). The scale comes with the message
(its schema, or a variable-scale value): one far beyond would build its digits for
minutes or exhaust memory, so it is refused first."""
MAX_BITS: Final = 83_886_080
"""The longest bit string a column may say it holds: PostgreSQL's longest (MySQL's is 64);
a message saying more is refused before its text is made."""
_POINT_TEXT: Final = re.compile(r"^\(\s*([^,\s]+)\s*,\s*([^)\s]+)\s*\)$")


def _clock(micros: int) -> str:
    """``HH:MM:SS[.ffffff]`` of a time of day (hours beyond 23, or a sign, for MySQL TIME)."""
    sign = "-" if micros < 0 else ""
    seconds, fraction = divmod(abs(micros), 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{fraction:06d}" if fraction else text


def _duration(micros: int) -> str:
    """ISO-8601 duration: ``P1DT2H3M4.5S``, ``PT0S``."""
    sign = "-" if micros < 0 else ""
    days, rest = divmod(abs(micros), _DAY_US)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, fraction = divmod(rest, 1_000_000)
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or fraction:
        clock += str(seconds) + (f".{fraction:06d}".rstrip("0") if fraction else "") + "S"
    if not clock and not days:
        clock = "0S"
    return f"{sign}P{f'{days}D' if days else ''}{'T' + clock if clock else ''}"


def _micros_of(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _micros_of_time(value: dt.time) -> int:
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


def _local_timestamp(value: dt.datetime, rendering: Rendering) -> str | int:
    """A date-time without zone (DATETIME, PostgreSQL TIMESTAMP)."""
    if rendering.timestamps is Timestamps.EPOCH_MS:
        return (value - _EPOCH) // _MS
    return value.isoformat()


def _utc_timestamp(value: dt.datetime, rendering: Rendering) -> str | int:
    """A moment (MySQL TIMESTAMP, TIMESTAMPTZ): in UTC, marked ``Z``."""
    if rendering.timestamps is Timestamps.EPOCH_MS:
        return (value - _UTC_EPOCH) // _MS
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat() + "Z"


def _utc_clock(value: dt.time) -> str:
    """A time of day with a zone, moved to UTC."""
    offset = value.utcoffset() or dt.timedelta()
    return _clock((_micros_of_time(value) - _micros_of(offset)) % _DAY_US) + "Z"


def _decimal_text(unscaled: int, scale: int) -> str:
    """The exact text of ``unscaled * 10**-scale``, with ``scale`` fraction digits."""
    if not -MAX_DECIMAL_SCALE <= scale <= MAX_DECIMAL_SCALE:
        msg = f"scale {scale} is outside -{MAX_DECIMAL_SCALE}..{MAX_DECIMAL_SCALE}"
        raise ValueError(msg)
    if scale <= 0:
        return str(unscaled * 10**-scale)
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    sign = "-" if unscaled < 0 else ""
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def _exact(text: str, rendering: Rendering) -> str:
    """A decimal's text as the rendering wants it (a number only when it is one)."""
    if rendering.decimals is Decimals.NUMBER and _DECIMAL_TEXT.match(text):
        return JsonNumber(text)
    return text


def _unscaled(encoded: object) -> int:
    """Connect's Decimal bytes (big-endian two's complement), base64 on the wire."""
    if not isinstance(encoded, str):
        msg = f"expected base64 text, got {type(encoded).__name__}"
        raise TypeError(msg)
    return int.from_bytes(base64.b64decode(encoded, validate=True), "big", signed=True)


# --------------------------------------------------------------------------- wire values

Convert = Callable[[Any], Any]


def wire_converter(column: ColumnType, rendering: Rendering) -> Convert | None:
    """The function from a column's wire value (never None) to its natural value.

    None when the wire value is already natural (or the column stays as on the wire).
    """
    if rendering.wire:
        return None
    make = _WIRE.get(column.kind)
    return None if make is None else make(column, rendering)


def _micros(value: object, per_us: int | None, ns: bool) -> int | float:
    """Microseconds of a count of ``per_us`` (or of nanoseconds): only a number counts.

    Checked first: multiplied by 1000, a text or a list of the message's would grow a
    thousandfold (a 1 MB text, a 1 GB one).
    """
    if not isinstance(value, int | float):
        msg = f"expected a number, got {type(value).__name__}"
        raise TypeError(msg)
    return value // 1000 if ns else value * (per_us or 1)


def _timestamp(per_us: int | None, ns: bool = False) -> Callable[[ColumnType, Rendering], Convert]:
    def make(_: ColumnType, rendering: Rendering) -> Convert:
        def convert(value: int) -> str | int:
            micros = _micros(value, per_us, ns)
            special = _INFINITY.get(value)
            if special is not None:
                return special if rendering.timestamps is Timestamps.ISO else value
            return _local_timestamp(_EPOCH + dt.timedelta(microseconds=micros), rendering)

        return convert

    return make


def _time(per_us: int | None, ns: bool = False) -> Callable[[ColumnType, Rendering], Convert]:
    def make(_: ColumnType, __: Rendering) -> Convert:
        def convert(value: object) -> str:
            micros = _micros(value, per_us, ns)
            if not isinstance(micros, int):
                msg = f"expected an integer, got {type(value).__name__}"
                raise TypeError(msg)
            return _clock(micros)

        return convert

    return make


def _wire_decimal(column: ColumnType, rendering: Rendering) -> Convert:
    scale = column.size
    if scale is None:  # decimal.handling.mode=string: the text is already exact

        def text(value: str) -> str:
            if not isinstance(value, str):
                msg = f"expected decimal text, got {type(value).__name__}"
                raise TypeError(msg)
            return _exact(value, rendering)

        return text
    return lambda value: _exact(_decimal_text(_unscaled(value), scale), rendering)


def _wire_variable_decimal(_: ColumnType, rendering: Rendering) -> Convert:
    def convert(value: Mapping[str, Any]) -> str:
        scale = value["scale"]
        if not isinstance(scale, int) or isinstance(scale, bool):
            msg = f"scale is {scale!r}"
            raise TypeError(msg)
        return _exact(_stripped(_decimal_text(_unscaled(value["value"]), scale)), rendering)

    return convert


def _stripped(text: str) -> str:
    """A decimal's text without trailing fraction zeros (``1.50`` → ``1.5``, ``2.0`` → ``2``).

    Debezium's precise mode sends NUMERIC without a declared scale so; both sides agree.
    """
    if "." not in text:
        return text
    text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _wire_zoned(_: ColumnType, rendering: Rendering) -> Convert:
    def convert(value: str) -> str | int:
        moment = dt.datetime.fromisoformat(value)
        return _utc_timestamp(moment.replace(tzinfo=moment.tzinfo or dt.UTC), rendering)

    return convert


def _wire_zoned_time(_: ColumnType, __: Rendering) -> Convert:
    def convert(value: str) -> str:
        moment = dt.time.fromisoformat(value)
        return _utc_clock(moment.replace(tzinfo=moment.tzinfo or dt.UTC))

    return convert


def _wire_bits(column: ColumnType, _: Rendering) -> Convert:
    def convert(value: str) -> str:
        raw = base64.b64decode(value, validate=True)
        length = column.size or len(raw) * 8
        if length > MAX_BITS:
            msg = f"a bit string of {length} bits is longer than {MAX_BITS}"
            raise ValueError(msg)
        return format(int.from_bytes(raw, "little"), f"0{length}b")

    return convert


def _wire_geometry(_: ColumnType, __: Rendering) -> Convert:
    return lambda value: wkt(base64.b64decode(value["wkb"], validate=True))


def _wire_point(_: ColumnType, __: Rendering) -> Convert:
    return lambda value: f"POINT({number(float(value['x']))} {number(float(value['y']))})"


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, bytes | bytearray):
        return any(value)
    if isinstance(value, str) and value in ("0", "1"):
        return value == "1"
    msg = f"expected 0/1 or a boolean, got {type(value).__name__}"
    raise TypeError(msg)


def _fixed(fn: Convert) -> Callable[[ColumnType, Rendering], Convert]:
    return lambda _, __: fn


_WIRE: Final[Mapping[Kind, Callable[[ColumnType, Rendering], Convert]]] = {
    Kind.DATE: _fixed(lambda days: dt.date.fromordinal(_EPOCH_DAY + days).isoformat()),
    Kind.TIME_MS: _time(1000),
    Kind.TIME_US: _time(None),
    Kind.TIME_NS: _time(None, ns=True),
    Kind.TIMESTAMP_MS: _timestamp(1000),
    Kind.TIMESTAMP_US: _timestamp(None),
    Kind.TIMESTAMP_NS: _timestamp(None, ns=True),
    Kind.ZONED_TIMESTAMP: _wire_zoned,
    Kind.ZONED_TIME: _wire_zoned_time,
    Kind.DURATION_US: _fixed(_duration),
    Kind.DECIMAL: _wire_decimal,
    Kind.VARIABLE_DECIMAL: _wire_variable_decimal,
    Kind.JSON: _fixed(orjson.loads),
    Kind.BOOLEAN: _fixed(_boolean),
    Kind.BITS: _wire_bits,
    Kind.GEOMETRY: _wire_geometry,
    Kind.POINT: _wire_point,
    Kind.FLOAT32: _fixed(float32),
}


# --------------------------------------------------------------------------- driver values


def driver_value(
    value: object, column: ColumnType | None, rendering: Rendering, zone: dt.tzinfo = dt.UTC
) -> Any:
    """A database driver's value (PyMySQL, psycopg) as the worker caches that column.

    ``column`` is what the rules declare or the cursor describes (None: judged by the
    value's Python type); ``zone`` is the session time zone in which the driver returned
    naive values of zoned columns (MySQL TIMESTAMP).
    """
    if value is None:
        return None
    kind = column.kind if column is not None and not rendering.wire else None
    if kind is None or kind is Kind.TEXT:
        return _by_type(value, rendering)
    if kind is Kind.ZONED_TIMESTAMP and isinstance(value, dt.datetime):
        return _utc_timestamp(value if value.tzinfo else value.replace(tzinfo=zone), rendering)
    if kind is Kind.ZONED_TIME and isinstance(value, dt.time):
        return _utc_clock(value if value.tzinfo else value.replace(tzinfo=zone))
    if kind in _TIMES and isinstance(value, dt.time | dt.timedelta):
        return _clock(
            _micros_of(value) if isinstance(value, dt.timedelta) else _micros_of_time(value)
        )
    if kind is Kind.DURATION_US and isinstance(value, dt.timedelta):
        return _duration(_micros_of(value))
    if kind in (Kind.DECIMAL, Kind.VARIABLE_DECIMAL) and isinstance(value, Decimal | int | str):
        text = _driver_decimal(Decimal(value))
        return _exact(_stripped(text) if kind is Kind.VARIABLE_DECIMAL else text, rendering)
    special = _DRIVER.get(kind)
    if special is not None:
        converted = special(value, column)
        if converted is not _NOT_MINE:
            return converted
    return _by_type(value, rendering)


_TIMES: Final = frozenset({Kind.TIME_MS, Kind.TIME_US, Kind.TIME_NS})
_NOT_MINE: Final = object()


def _driver_decimal(value: Decimal) -> str:
    """Exact text with the value's own scale; a zero has no sign."""
    return format(abs(value) if value.is_zero() else value, "f")


def _driver_json(value: object, _: ColumnType | None) -> object:
    """JSON text (PyMySQL) parsed; a value a driver parsed already (psycopg) kept.

    A string that is no JSON text is taken for a parsed string scalar (psycopg's jsonb
    ``"abc"``); read with :func:`cursor_types`, psycopg's JSON is never parsed twice.
    """
    if not isinstance(value, str | bytes):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _driver_bits(value: object, column: ColumnType | None) -> object:
    if isinstance(value, bytes):  # PyMySQL: big-endian
        size = column.size if column is not None and column.size else len(value) * 8
        return format(int.from_bytes(value, "big"), f"0{size}b")
    return _NOT_MINE


def _driver_geometry(value: object, _: ColumnType | None) -> object:
    if isinstance(value, bytes | bytearray | memoryview):  # PyMySQL: SRID + WKB
        return mysql_wkt(bytes(value))
    if isinstance(value, str):  # psycopg, PostGIS: hex EWKB
        return wkt(bytes.fromhex(value))
    return _NOT_MINE


def _driver_point(value: object, _: ColumnType | None) -> object:
    if isinstance(value, str):  # psycopg, PostgreSQL POINT: "(x,y)"
        match = _POINT_TEXT.match(value)
        if match is None:
            msg = f"{value!r} is not a PostgreSQL point"
            raise ValueError(msg)
        return f"POINT({number(float(match.group(1)))} {number(float(match.group(2)))})"
    return _NOT_MINE


def _driver_float32(value: object, _: ColumnType | None) -> object:
    return float32(float(value)) if isinstance(value, float | int) else _NOT_MINE


def _driver_boolean(value: object, _: ColumnType | None) -> object:
    return _boolean(value)


_DRIVER: Final[Mapping[Kind, Callable[[object, ColumnType | None], object]]] = {
    Kind.JSON: _driver_json,
    Kind.BOOLEAN: _driver_boolean,
    Kind.BITS: _driver_bits,
    Kind.GEOMETRY: _driver_geometry,
    Kind.POINT: _driver_point,
    Kind.FLOAT32: _driver_float32,
}


def _by_type(value: object, rendering: Rendering) -> Any:
    """A driver value of no declared type, rendered by what it is."""
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    if isinstance(value, Decimal):
        return _exact(_driver_decimal(value), rendering)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return _utc_timestamp(value, rendering)
        return _local_timestamp(value, rendering)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return _utc_clock(value) if value.tzinfo is not None else _clock(_micros_of_time(value))
    if isinstance(value, dt.timedelta):  # PyMySQL's TIME
        return _clock(_micros_of(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return str(value)
    msg = f"a {type(value).__name__} value has no cached form; declare the column's type"
    raise TypeError(msg)


# --------------------------------------------------------------------------- per table

_Pairs = tuple[tuple[str, ColumnType, Convert], ...]
_CONVERT_ERRORS: Final = (
    ValueError,
    TypeError,
    KeyError,
    OverflowError,
    binascii.Error,
    orjson.JSONDecodeError,
)
MAX_SHOWN: Final = 40


class UndecodableValue(RenderError):
    """A column's wire value does not decode as its type says.

    ``partial`` is the change with the failing columns left out of its images, so what
    can still be rendered from it (its other keys) is.
    """

    def __init__(self, reason: str, partial: ChangeEvent) -> None:
        self.partial = partial
        super().__init__(reason)


@dataclass(frozen=True, eq=False)
class TableValues:
    """How one table's values are cached: decoded or not, declared types, choices.

    Converters are built once per distinct schema (:class:`~cdc_cache.core.logical.RowTypes`)
    and kept; a change of a schema already seen costs a dictionary lookup. ``declared``
    types apply where the record's schema names no logical type (schemaless records, a
    TINYINT(1) meant as a boolean): a schema that names one says how the value was
    encoded, so it wins, and one rules file serves schemaless and schema-carrying topics.
    """

    natural: bool = False
    declared: Mapping[str, ColumnType] = field(default_factory=dict)
    default: Rendering = Rendering()
    columns: Mapping[str, Rendering] = field(default_factory=dict)
    _compiled: dict[RowTypes | None, _Pairs] = field(default_factory=dict, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TableValues) and other._settings() == self._settings()

    def __hash__(self) -> int:
        return hash(self._settings())

    def _settings(self) -> tuple[object, ...]:
        """What the table's rules say (compared, hashed); the converters built are not."""
        return (
            self.natural,
            tuple(sorted(self.declared.items())),
            self.default,
            tuple(sorted(self.columns.items())),
        )

    def rendering(self, column: str) -> Rendering:
        """The output choices of ``column``."""
        return self.columns.get(column, self.default)

    def event(self, event: ChangeEvent) -> ChangeEvent:
        """``event`` with its images' values natural (itself when there is nothing to do).

        Raises :class:`UndecodableValue` naming each column whose value does not decode.
        """
        if not self.natural:
            return event
        pairs = self._compiled.get(event.types)
        if pairs is None:
            pairs = self._compile(event.types)
        if not pairs:
            return event
        problems: list[str] = []
        after = None if event.after is None else _convert(pairs, event.after, problems, "after")
        # An update's before image mostly repeats the after image: reuse what was decoded.
        seen = (event.after, after) if event.after is not None and after is not None else None
        before = (
            None
            if event.before is None
            else _convert(pairs, event.before, problems, "before", seen)
        )
        key = _convert(pairs, event.key, problems, "key", seen)
        natural = event.with_images(before, after, key)
        if problems:
            reason = f"{event.table} {event.op.value} at {event.position}: " + "; ".join(
                dict.fromkeys(problems)
            )
            raise UndecodableValue(reason, natural)
        return natural

    def undecoded(self, event: ChangeEvent) -> ChangeEvent:
        """``event`` without the columns :meth:`event` would decode (of a wire event).

        What still renders the keys of a change whose decoding raised: the columns left
        are cached as they came, so their keys are the ones in the cache.
        """
        if not self.natural:
            return event
        schema = event.types.columns if event.types is not None else ()
        typed = {*self.declared, *(column for column, _ in schema)}

        def left(row: Row) -> Row:
            return {name: value for name, value in row.items() if name not in typed}

        before = None if event.before is None else left(event.before)
        after = None if event.after is None else left(event.after)
        return event.with_images(before, after, left(event.key))

    def _compile(self, types: RowTypes | None) -> _Pairs:
        kinds = dict(self.declared)  # where the schema names no logical type
        if types is not None:
            kinds.update(types.columns)  # the record's own schema says how it was encoded
        pairs = []
        for column, kind in kinds.items():
            convert = wire_converter(kind, self.rendering(column))
            if convert is not None:
                pairs.append((column, kind, convert))
        if len(self._compiled) >= 256:  # schemas come and go with migrations: stay bounded
            self._compiled.clear()
        self._compiled[types] = compiled = tuple(pairs)
        return compiled

    def driver_row(
        self,
        row: Mapping[str, Any],
        described: Mapping[str, ColumnType] | None = None,
        zone: dt.tzinfo = dt.UTC,
    ) -> dict[str, Any]:
        """A row as a driver returned it, as the worker caches it (natural values).

        ``described`` holds column types read from the cursor (:func:`cursor_types`); the
        rules' declarations win over them, except where the cursor says the driver decoded
        the value already (psycopg's JSON).
        """
        out: dict[str, Any] = {}
        for name, value in row.items():
            told = (described or {}).get(name)
            column = told if told == _AS_RETURNED else self.declared.get(name) or told
            try:
                out[name] = driver_value(value, column, self.rendering(name), zone)
            except _CONVERT_ERRORS as exc:
                declared = f" (declared {column})" if column is not None else ""
                msg = f"column '{name}'{declared}: {type(value).__name__} value: {exc}"
                raise ValueError(msg) from exc
        return out


WIRE_VALUES: Final = TableValues()


def _convert(
    pairs: _Pairs,
    row: Row,
    problems: list[str],
    image: str,
    seen: tuple[Row, Row] | None = None,
) -> Row:
    """``row`` with its typed columns decoded; ``row`` itself when none holds a value.

    ``seen`` is another image as it came and as decoded: a column holding the same wire
    value takes its decoded value without decoding it again.
    """
    out: dict[str, Any] | None = None
    for column, kind, convert in pairs:
        value = row.get(column)
        if value is None:
            continue
        if out is None:
            out = dict(row)
        if seen is not None and column in seen[1] and seen[0].get(column) == value:
            out[column] = seen[1][column]
            continue
        try:
            out[column] = convert(value)
        except _CONVERT_ERRORS as exc:
            del out[column]
            shown = repr(value)
            if len(shown) > MAX_SHOWN:
                shown = shown[: MAX_SHOWN - 3] + "..."
            problems.append(
                f"column '{column}' ({kind}) in the {image} image cannot be decoded "
                f"from {shown}: {type(exc).__name__}: {exc}"
            )
    return row if out is None else out


# --------------------------------------------------------------------------- cursors

Described = tuple[str, int, int | None, int | None]
"""One column of a cursor's description: name, type code (PyMySQL) or oid, size, precision."""

# PyMySQL type codes (pymysql.constants.FIELD_TYPE) whose values alone do not say the type.
_MYSQL_FLOAT: Final = 4
_MYSQL_TIMESTAMP: Final = 7
_MYSQL_BIT: Final = 16
_MYSQL_JSON: Final = 245
_MYSQL_GEOMETRY: Final = 255
# PostgreSQL type oids likewise.
_PG_BIT: Final = 1560
_PG_NUMERIC: Final = 1700
_AS_RETURNED: Final = ColumnType(Kind.TEXT)  # the driver decoded it already: take it so
_PG_OIDS: Final[Mapping[int, ColumnType]] = {
    700: ColumnType(Kind.FLOAT32),  # real
    600: ColumnType(Kind.POINT),
    1186: ColumnType(Kind.DURATION_US),  # interval (psycopg: timedelta, as for MySQL TIME)
    114: _AS_RETURNED,  # json: psycopg parsed it (a string scalar stays a string)
    3802: _AS_RETURNED,  # jsonb
}


def cursor_types(cursor: Any) -> dict[str, ColumnType]:
    """Column types a PyMySQL or psycopg cursor's description tells beyond the values.

    MySQL TIMESTAMP (a moment, returned naive in the session's zone), JSON (returned as
    text), BIT, FLOAT and geometries; PostgreSQL ``real``, ``point``, ``interval``,
    ``bit(1)`` and ``numeric`` without a scale. Other drivers: nothing.
    """
    module = type(cursor).__module__
    description = cursor.description or ()
    if module.startswith("pymysql"):
        return described_types("mysql", [(d[0], d[1], d[3], d[4]) for d in description])
    if module.startswith("psycopg"):
        columns = [(c.name, c.type_code, c.display_size, c.precision) for c in description]
        return described_types("postgresql", columns)
    return {}


def described_types(dialect: str, columns: list[Described]) -> dict[str, ColumnType]:
    """:func:`cursor_types` from a description already read: ``mysql`` or ``postgresql``."""
    out: dict[str, ColumnType] = {}
    for name, code, size, precision in columns:
        mysql = dialect == "mysql"
        found = _mysql_type(code, size) if mysql else _pg_type(code, size, precision)
        if found is not None:
            out[name] = found
    return out


def _mysql_type(code: int, size: int | None) -> ColumnType | None:
    if code == _MYSQL_TIMESTAMP:
        return ColumnType(Kind.ZONED_TIMESTAMP)
    if code == _MYSQL_JSON:
        return ColumnType(Kind.JSON)
    if code == _MYSQL_GEOMETRY:
        return ColumnType(Kind.GEOMETRY)
    if code == _MYSQL_FLOAT:
        return ColumnType(Kind.FLOAT32)
    if code == _MYSQL_BIT:
        return ColumnType(Kind.BOOLEAN) if size == 1 else ColumnType(Kind.BITS, size)
    return None


def _pg_type(code: int, size: int | None, precision: int | None) -> ColumnType | None:
    if code == _PG_BIT and size == 1:  # psycopg returns "1"; Debezium a boolean
        return ColumnType(Kind.BOOLEAN)
    if code == _PG_NUMERIC and precision is None:  # no declared scale: variable, see above
        return ColumnType(Kind.VARIABLE_DECIMAL)
    return _PG_OIDS.get(code)
