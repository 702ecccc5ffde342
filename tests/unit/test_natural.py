"""Natural values: a Debezium wire value and the driver's value of the same cell render alike.

The wire encodings here are computed as Debezium documents them (epoch days, milli/micro
seconds since the epoch or midnight, big-endian two's complement bytes with a scale,
little-endian bits, WKB), independently of the code under test.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import struct
import tracemalloc
from dataclasses import fields, replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Op, Origin
from cdc_cache.core.keys import escape_value
from cdc_cache.core.logical import ColumnType, Kind, RowTypes
from cdc_cache.core.positions import SourcePosition
from cdc_cache.source.natural import (
    MAX_BITS,
    MAX_DECIMAL_SCALE,
    Decimals,
    JsonNumber,
    Rendering,
    TableValues,
    Timestamps,
    UndecodableValue,
    described_types,
    driver_value,
    dumps,
    wire_converter,
)

ISO = Rendering()
NUMBERS = Rendering(Decimals.NUMBER)
EPOCH = Rendering(timestamps=Timestamps.EPOCH_MS)
UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def naive(*parts: int) -> dt.datetime:
    """A DATETIME's value: no zone, as the driver returns it."""
    return dt.datetime(*parts, tzinfo=dt.UTC).replace(tzinfo=None)


def wire(kind: Kind, value: object, rendering: Rendering = ISO, size: int | None = None) -> object:
    convert = wire_converter(ColumnType(kind, size), rendering)
    assert convert is not None
    return convert(value)


def unscaled_b64(unscaled: int) -> str:
    """Connect's Decimal bytes: big-endian two's complement of the unscaled value."""
    raw = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    return base64.b64encode(raw).decode()


# ------------------------------------------------------------------ documented examples


def test_debeziums_documented_examples_read_as_the_database_shows_them() -> None:
    # MySQL DATETIME '2018-06-20 06:37:03' becomes 1529476623000 (ms, "using UTC").
    assert wire(Kind.TIMESTAMP_MS, 1529476623000) == "2018-06-20T06:37:03"
    # MySQL TIMESTAMP '2018-06-20 06:37:03' at America/Los_Angeles is 13:37:03Z.
    assert wire(Kind.ZONED_TIMESTAMP, "2018-06-20T13:37:03Z") == "2018-06-20T13:37:03Z"
    # PostgreSQL TIMESTAMP '2018-06-20 15:13:16.945104' is MicroTimestamp 1529507596945104.
    assert wire(Kind.TIMESTAMP_US, 1529507596945104) == "2018-06-20T15:13:16.945104"
    assert wire(Kind.DATE, 19782) == "2024-02-29"
    assert wire(Kind.DATE, -1) == "1969-12-31"
    assert wire(Kind.TIME_MS, 47655678) == "13:14:15.678000"
    assert wire(Kind.TIME_US, 0) == "00:00:00"
    assert wire(Kind.TIME_NS, 47655678901234) == "13:14:15.678901"


def test_postgres_infinity_timestamps_are_named() -> None:
    assert wire(Kind.TIMESTAMP_US, 9223372036825200000) == "infinity"
    assert wire(Kind.TIMESTAMP_MS, -9223372036832400000) == "-infinity"
    assert wire(Kind.TIMESTAMP_US, 9223372036825200000, EPOCH) == 9223372036825200000


def test_a_zoned_timestamp_in_another_offset_is_moved_to_utc() -> None:
    assert (
        wire(Kind.ZONED_TIMESTAMP, "2024-02-29T13:14:15.5+02:00") == "2024-02-29T11:14:15.500000Z"
    )
    assert wire(Kind.ZONED_TIME, "13:14:15.5+02:00") == "11:14:15.500000Z"
    assert wire(Kind.ZONED_TIME, "01:00:00+02:00") == "23:00:00Z"  # wraps around midnight


def test_decimals_keep_their_scale_and_sign() -> None:
    assert wire(Kind.DECIMAL, "B1vNFQ==", size=4) == "12345.6789"
    assert wire(Kind.DECIMAL, "/w==", size=4) == "-0.0001"
    assert wire(Kind.DECIMAL, "AA==", size=2) == "0.00"
    assert wire(Kind.DECIMAL, "AQ==", size=0) == "1"
    assert wire(Kind.DECIMAL, "12.50") == "12.50"  # decimal.handling.mode=string
    assert wire(Kind.DECIMAL, "NAN", NUMBERS) == "NAN"  # not a number: stays text
    variable = {"scale": 2, "value": base64.b64encode(b"\x00\x96").decode()}  # 150
    assert wire(Kind.VARIABLE_DECIMAL, variable) == "1.5"


def test_a_decimal_as_a_number_is_exact_in_json_and_plain_in_keys() -> None:
    value = wire(Kind.DECIMAL, "B1vNFQ==", NUMBERS, size=4)
    assert isinstance(value, JsonNumber)
    assert dumps({"price": value, "big": JsonNumber("12345678901234567890.10")}) == (
        b'{"price":12345.6789,"big":12345678901234567890.10}'
    )
    assert escape_value(value) == "12345.6789"
    assert JsonNumber("1.50") != JsonNumber("1.5")  # compared as the bytes they become


def test_a_cached_value_holds_no_more_memory_than_its_json() -> None:
    """The worker keeps thousands of values in flight; each must cost its size, not 4 KiB."""
    tracemalloc.start()
    try:
        values = [dumps({"sku": f"sku-{n}", "qty": n, "name": "x" * 50}) for n in range(1000)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = sum(len(value) for value in values)
    assert held < size + 1000 * 64  # 64 bytes per object at most beyond the JSON itself


def test_other_kinds() -> None:
    assert wire(Kind.JSON, '{"b": 1, "a": [1, 2.50]}') == {"b": 1, "a": [1, 2.5]}
    assert wire(Kind.BOOLEAN, 1) is True
    assert wire(Kind.BOOLEAN, 0) is False
    assert wire(Kind.BITS, base64.b64encode(bytes([0b10101])).decode(), size=5) == "10101"
    assert wire(Kind.DURATION_US, 93784500000) == "P1DT2H3M4.5S"
    assert wire(Kind.DURATION_US, 0) == "PT0S"
    assert wire(Kind.DURATION_US, -86401000000) == "-P1DT1S"
    assert wire(Kind.FLOAT32, 1.100000023841858) == 1.1
    assert wire(Kind.POINT, {"x": 1.5, "y": 2.0, "wkb": "", "srid": None}) == "POINT(1.5 2)"
    assert wire_converter(ColumnType(Kind.TEXT), ISO) is None
    assert wire_converter(ColumnType(Kind.DATE), Rendering(wire=True)) is None


def test_timestamps_as_epoch_milliseconds() -> None:
    assert wire(Kind.TIMESTAMP_US, 1529507596945104, EPOCH) == 1529507596945
    assert wire(Kind.ZONED_TIMESTAMP, "1970-01-01T00:00:01.5Z", EPOCH) == 1500
    moment = naive(1969, 12, 31, 23, 59, 59, 999000)
    assert driver_value(moment, None, EPOCH) == -1


# ------------------------------------------------------------------ wire == driver, always

moments = st.datetimes(min_value=naive(1, 1, 2), max_value=naive(9999, 12, 30))


@given(moments)
def test_datetime_micros_and_the_driver_datetime_agree(moment: dt.datetime) -> None:
    micros = (moment - naive(1970, 1, 1)) // dt.timedelta(microseconds=1)
    for rendering in (ISO, EPOCH):
        assert wire(Kind.TIMESTAMP_US, micros, rendering) == driver_value(moment, None, rendering)
    millis = micros // 1000
    truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert wire(Kind.TIMESTAMP_MS, millis) == driver_value(truncated, None, ISO)


@given(moments, st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_zoned_timestamps_agree_whatever_the_session_zone(
    moment: dt.datetime, minutes: int
) -> None:
    zone = dt.timezone(dt.timedelta(minutes=minutes))
    utc = moment.replace(tzinfo=dt.UTC)
    shipped = utc.isoformat().replace("+00:00", "Z")  # Debezium: ISO-8601 in UTC
    kind = ColumnType(Kind.ZONED_TIMESTAMP)
    try:
        local = utc.astimezone(zone)  # what psycopg returns, aware
    except OverflowError:
        return
    naive = local.replace(tzinfo=None)  # what PyMySQL returns, in the session's zone
    for rendering in (ISO, EPOCH):
        expected = wire(Kind.ZONED_TIMESTAMP, shipped, rendering)
        assert driver_value(local, kind, rendering) == expected
        assert driver_value(naive, kind, rendering, zone) == expected


@given(st.dates())
def test_dates_agree(day: dt.date) -> None:
    assert wire(Kind.DATE, (day - dt.date(1970, 1, 1)).days) == driver_value(day, None, ISO)


@given(st.times())
def test_times_agree_as_time_and_as_timedelta(clock: dt.time) -> None:
    micros = ((clock.hour * 60 + clock.minute) * 60 + clock.second) * 1_000_000 + clock.microsecond
    expected = wire(Kind.TIME_US, micros)
    assert expected == clock.isoformat()
    assert driver_value(clock, None, ISO) == expected  # psycopg
    assert driver_value(dt.timedelta(microseconds=micros), None, ISO) == expected  # PyMySQL


@given(st.timedeltas(min_value=dt.timedelta(days=-999), max_value=dt.timedelta(days=999)))
def test_intervals_agree(delta: dt.timedelta) -> None:
    micros = delta // dt.timedelta(microseconds=1)
    column = ColumnType(Kind.DURATION_US)
    assert wire(Kind.DURATION_US, micros) == driver_value(delta, column, ISO)


@given(st.integers(min_value=-(10**30), max_value=10**30), st.integers(min_value=0, max_value=12))
def test_decimals_agree_in_both_modes(unscaled: int, scale: int) -> None:
    value = Decimal(f"{unscaled}E-{scale}")  # as the driver returns it: the column's scale
    text = format(value, "f")  # what string mode ships (BigDecimal.toPlainString)
    for rendering in (ISO, NUMBERS):
        expected = driver_value(value, None, rendering)
        assert wire(Kind.DECIMAL, unscaled_b64(unscaled), rendering, scale) == expected
        assert wire(Kind.DECIMAL, text, rendering) == expected
    assert dumps(driver_value(value, None, NUMBERS)) == text.encode()
    assert dumps(driver_value(value, None, ISO)) == f'"{text}"'.encode()


@given(st.integers(min_value=0, max_value=2**40 - 1), st.integers(min_value=1, max_value=40))
def test_bits_agree(bits: int, length: int) -> None:
    bits &= (1 << length) - 1
    size = (length + 7) // 8
    little = base64.b64encode(bits.to_bytes(size, "little")).decode()  # Debezium
    big = bits.to_bytes(size, "big")  # PyMySQL
    column = ColumnType(Kind.BITS, length)
    assert wire(Kind.BITS, little, size=length) == driver_value(big, column, ISO)
    assert driver_value(format(bits, f"0{length}b"), column, ISO) == format(bits, f"0{length}b")


coordinates = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(st.lists(st.tuples(coordinates, coordinates), min_size=1, max_size=5))
def test_geometries_agree(points: list[tuple[float, float]]) -> None:
    wkb = struct.pack("<BII", 1, 2, len(points)) + b"".join(struct.pack("<dd", *p) for p in points)
    shipped = {"wkb": base64.b64encode(wkb).decode(), "srid": 4326}
    mysql = struct.pack("<I", 4326) + wkb
    column = ColumnType(Kind.GEOMETRY)
    assert wire(Kind.GEOMETRY, shipped) == driver_value(mysql, column, ISO)
    assert driver_value(mysql, column, ISO).startswith("LINESTRING(")


def test_driver_values_of_no_declared_type() -> None:
    import ipaddress
    import uuid

    assert driver_value(Decimal("-0.00"), None, ISO) == "0.00"
    assert driver_value(Decimal("1.50"), None, NUMBERS) == JsonNumber("1.50")
    assert driver_value(uuid.UUID(int=1), None, ISO) == "00000000-0000-0000-0000-000000000001"
    assert driver_value(b"\x00\xff", None, ISO) == "AP8="
    assert driver_value(ipaddress.ip_interface("10.0.0.1/8"), None, ISO) == "10.0.0.1/8"
    assert driver_value({"a": [1]}, None, ISO) == {"a": [1]}
    aware = dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert driver_value(aware, None, ISO) == "2024-01-01T00:00:00Z"
    with pytest.raises(TypeError, match="declare the column's type"):
        driver_value(object(), None, ISO)


def test_declared_driver_values() -> None:
    boolean = ColumnType(Kind.BOOLEAN)
    assert driver_value(1, boolean, ISO) is True
    assert driver_value(b"\x00", boolean, ISO) is False
    assert driver_value("1", boolean, ISO) is True  # psycopg's bit(1)
    assert driver_value('{"a": 1}', ColumnType(Kind.JSON), ISO) == {"a": 1}  # PyMySQL
    assert driver_value("scalar", ColumnType(Kind.JSON), ISO) == "scalar"  # psycopg, parsed
    assert driver_value("(1.5,-2)", ColumnType(Kind.POINT), ISO) == "POINT(1.5 -2)"
    assert driver_value(Decimal("100.00"), ColumnType(Kind.VARIABLE_DECIMAL), ISO) == "100"
    assert driver_value(1.100000023841858, ColumnType(Kind.FLOAT32), ISO) == 1.1


def test_cursor_descriptions_say_what_values_do_not() -> None:
    mysql = described_types(
        "mysql",
        [("ts", 7, 19, 0), ("j", 245, 0, 0), ("b1", 16, 1, 1), ("b5", 16, 5, 5), ("g", 255, 0, 0),
         ("f", 4, 12, 31), ("dt", 12, 19, 0)],
    )  # fmt: skip
    assert {c: str(t) for c, t in mysql.items()} == {
        "ts": "zoned_timestamp", "j": "json", "b1": "boolean", "b5": "bits(5)",
        "g": "geometry", "f": "float32",
    }  # fmt: skip
    pg = described_types(
        "postgresql",
        [("r", 700, None, None), ("n", 1700, None, None), ("n2", 1700, None, 12),
         ("b1", 1560, 1, None), ("iv", 1186, None, None), ("j", 3802, None, None)],
    )  # fmt: skip
    assert {c: str(t) for c, t in pg.items()} == {
        "r": "float32", "n": "variable_decimal", "b1": "boolean", "iv": "duration_us",
        "j": "text",
    }  # fmt: skip


# ------------------------------------------------------------------ per table

TYPES = RowTypes([("d", ColumnType(Kind.DATE)), ("amount", ColumnType(Kind.DECIMAL, 2))])


def change(after: dict[str, object], types: RowTypes | None = TYPES) -> ChangeEvent:
    return ChangeEvent(
        table="shop.orders",
        op=Op.UPDATE,
        before={**after, "d": 0},
        after=after,
        key={"id": after["id"]},
        position=SourcePosition(0, 1, 4, 0),
        committed_at_ms=1,
        types=types,
    )


def test_a_table_decodes_every_image_and_keeps_what_has_no_type() -> None:
    values = TableValues(natural=True)
    event = values.event(change({"id": 7, "d": 19782, "amount": "BNI=", "note": "x"}))
    assert event.after == {"id": 7, "d": "2024-02-29", "amount": "12.34", "note": "x"}
    assert event.before == {"id": 7, "d": "1970-01-01", "amount": "12.34", "note": "x"}
    assert event.key == {"id": 7}
    assert (event.position, event.op, event.committed_at_ms) == (
        SourcePosition(0, 1, 4, 0),
        Op.UPDATE,
        1,
    )


def test_a_wire_table_or_a_change_of_no_typed_column_is_left_as_it_is() -> None:
    wire_event = change({"id": 7, "d": 19782, "amount": "BNI="})
    assert TableValues(natural=False).event(wire_event) is wire_event
    untyped = change({"id": 7, "d": 19782}, types=RowTypes([]))
    assert TableValues(natural=True).event(untyped) is untyped


def test_declared_types_apply_where_the_schema_names_none() -> None:
    values = TableValues(
        natural=True,
        declared={"flag": ColumnType(Kind.BOOLEAN), "amount": ColumnType(Kind.DECIMAL)},
    )
    schemaless = values.event(change({"id": 1, "d": 0, "flag": 1, "amount": "1.50"}, None))
    assert schemaless.after == {"id": 1, "d": 0, "flag": True, "amount": "1.50"}
    # The schema says amount is bytes with scale 2: it wins over "decimal" (text).
    typed = values.event(change({"id": 1, "d": 0, "flag": 1, "amount": "AJY="}))
    assert typed.after == {"id": 1, "d": "1970-01-01", "flag": True, "amount": "1.50"}


def test_per_column_choices() -> None:
    values = TableValues(
        natural=True,
        default=NUMBERS,
        columns={"d": Rendering(wire=True)},
    )
    event = values.event(change({"id": 1, "d": 19782, "amount": "BNI="}))
    assert event.after == {"id": 1, "d": 19782, "amount": JsonNumber("12.34")}


def test_converters_are_built_once_per_schema() -> None:
    values = TableValues(natural=True)
    for n in range(50):
        same = RowTypes([("d", ColumnType(Kind.DATE)), ("amount", ColumnType(Kind.DECIMAL, 2))])
        values.event(change({"id": n, "d": n, "amount": "AQ=="}, types=same))
    assert list(values._compiled) == [TYPES]


def test_a_value_that_does_not_decode_names_its_column_and_keeps_the_rest() -> None:
    values = TableValues(natural=True)
    with pytest.raises(UndecodableValue) as caught:
        values.event(change({"id": 7, "d": 19782, "amount": "not base64!"}))
    error = caught.value
    assert isinstance(error, RenderError)
    assert "column 'amount' (decimal(2)) in the after image" in error.reason
    assert error.partial.after == {"id": 7, "d": "2024-02-29"}


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (ColumnType(Kind.DECIMAL, MAX_DECIMAL_SCALE + 1), "AQ=="),
        (ColumnType(Kind.DECIMAL, 10**6), "AQ=="),
        (ColumnType(Kind.VARIABLE_DECIMAL), {"scale": 10**6, "value": "AQ=="}),
        (ColumnType(Kind.VARIABLE_DECIMAL), {"scale": -MAX_DECIMAL_SCALE - 1, "value": "AQ=="}),
        (ColumnType(Kind.BITS, MAX_BITS + 1), "AQ=="),
    ],
    ids=["scale", "scale-1e6", "variable-scale-1e6", "negative-scale", "bits"],
)
def test_a_size_beyond_any_database_is_refused_before_its_text_is_made(
    column: ColumnType, value: object
) -> None:
    """The message says the scale or length: far beyond, it would hang or exhaust memory."""
    values = TableValues(natural=True)
    with pytest.raises(UndecodableValue) as caught:
        values.event(change({"id": 7, "n": value}, RowTypes([("n", column)])))
    assert f"column 'n' ({column}) in the after image" in caught.value.reason
    assert caught.value.partial.after == {"id": 7}


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("value", ["7" * 100_000, [7] * 10_000], ids=["text", "list"])
def test_no_column_type_grows_a_value_of_the_wrong_type(kind: Kind, value: object) -> None:
    """A text or list where a number belongs: TIME_MS and TIMESTAMP_MS multiplied it by
    1000 before anything checked it (a 1 MB text of a message, a 1 GB one)."""
    convert = wire_converter(
        ColumnType(kind, 2 if kind in (Kind.DECIMAL, Kind.BITS) else None), ISO
    )
    tracemalloc.start()
    try:
        with contextlib.suppress(ValueError, TypeError, KeyError, binascii.Error):
            if convert is not None:
                convert(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000


def test_the_largest_sizes_a_database_holds_still_decode() -> None:
    assert wire(Kind.DECIMAL, "AQ==", size=MAX_DECIMAL_SCALE) == "0." + "0" * 16382 + "1"
    assert wire(Kind.VARIABLE_DECIMAL, {"scale": -1000, "value": "AQ=="}) == "1" + "0" * 1000
    assert wire(Kind.BITS, "AQ==", size=MAX_BITS) == "0" * (MAX_BITS - 1) + "1"


def test_driver_rows_follow_the_declared_types_and_choices() -> None:
    values = TableValues(
        natural=True,
        declared={"paid": ColumnType(Kind.BOOLEAN)},
        columns={"total": NUMBERS},
    )
    row = {"id": 1, "paid": 1, "total": Decimal("9.90"), "day": dt.date(2026, 11, 29)}
    assert values.driver_row(row) == {
        "id": 1,
        "paid": True,
        "total": JsonNumber("9.90"),
        "day": "2026-11-29",
    }
    with pytest.raises(ValueError, match="column 'paid' \\(declared boolean\\)"):
        values.driver_row({"paid": "yes"})


def test_tables_compare_by_what_their_rules_say() -> None:
    declared = {"d": ColumnType(Kind.DATE)}
    a, b = TableValues(True, declared), TableValues(True, dict(declared))
    a.event(change({"id": 1, "d": 1, "amount": "AQ=="}))  # builds converters in a only
    assert a == b and hash(a) == hash(b)
    assert a != TableValues(True, declared, NUMBERS)


def test_a_decoded_change_keeps_every_field_but_its_images_and_types() -> None:
    """``with_images`` builds the change field by field: a field added to ChangeEvent and
    left out there would be lost from every decoded change."""
    wire = ChangeEvent(
        "db.t", Op.UPDATE, {"id": 1}, {"id": 2}, {"id": 3}, SourcePosition(1, 2, 3, 4),
        5, 6, True, "srv", Origin("server:7", ("u", 8), True), RowTypes(()), True,
    )  # fmt: skip
    assert all(getattr(wire, f.name) != f.default for f in fields(wire))  # nothing default
    decoded = wire.with_images({"id": 9}, None, {"id": 10})
    assert decoded == replace(wire, before={"id": 9}, after=None, key={"id": 10}, types=None)
