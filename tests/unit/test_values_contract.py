"""The worker's value equals the fill helper's, byte for byte, for every common column type.

Recorded real Debezium output (``scripts/record-debezium-fixtures --values``): MariaDB (as
MySQL) and PostgreSQL, a table of every common column type, under
``decimal.handling.mode`` precise (Debezium's default) and string, each as JsonConverter
with and without schemas, flattened, and Avro. Next to the records, the same table's rows
as PyMySQL and psycopg returned them after each scenario, read in a session of another
time zone than UTC. Each change goes through the worker's path (decode, decode values,
plan); the row it describes goes through :class:`~cdc_cache.aside.fill.RowCodec`; the key and
the bytes must be the same.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from cdc_cache.aside.fill import RowCodec
from cdc_cache.core.events import Op, SourceRecord
from cdc_cache.core.logical import ColumnType
from cdc_cache.plan.cache_ops import SetRow
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.source.avro import AvroParser, AvroSchema, parse_schema
from cdc_cache.source.envelope import Parse
from cdc_cache.source.natural import described_types
from tests.driver_rows import load_row

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "debezium"
SOURCES = ("mariadb", "postgres")
MODES = ("precise", "string")
FORMATS = ("schemas", "noschemas", "flat", "avro")
TABLE = "vals.t"
KEYS = ("v:{id}", "vd:{d}:{id}", "vh:{id}")

# What the schema cannot say, declared as a rules file would: TINYINT(1) as a boolean,
# MariaDB's JSON (a LONGTEXT to the connector) as a document.
ALWAYS = {"mariadb": {"flag": "boolean", "doc": "json"}, "postgres": {}}
# What a schemaless record needs declared to decode alike (per decimal mode).
SCHEMALESS = {
    "mariadb": {
        "d": "date",
        **{c: "time_us" for c in ("tm", "tm3", "tm6")},
        "dt": "timestamp_ms",
        "dt3": "timestamp_ms",
        "dt6": "timestamp_us",
        "ts": "zoned_timestamp",
        "ts6": "zoned_timestamp",
        "f": "float32",
        "bit1": "boolean",
        "bits": "bits(5)",
        "g": "geometry",
        "pt": "geometry",
    },
    "postgres": {
        "d": "date",
        "tm3": "time_ms",
        "tm": "time_us",
        "ttz": "zoned_time",
        "dt3": "timestamp_ms",
        "dt": "timestamp_us",
        "ts": "zoned_timestamp",
        "ts3": "zoned_timestamp",
        "iv": "duration_us",
        "f": "float32",
        "doc": "json",
        "docb": "json",
        "bit1": "boolean",
        "bits": "bits(5)",
        "pt": "point",
    },
}
DECIMALS = {
    ("mariadb", "precise"): {"amount": "decimal(4)", "price": "decimal(2)", "whole": "decimal(0)"},
    ("mariadb", "string"): {"amount": "decimal", "price": "decimal", "whole": "decimal"},
    ("postgres", "precise"): {"amount": "decimal(4)", "n": "variable_decimal"},
    ("postgres", "string"): {"amount": "decimal", "n": "decimal"},
}


def rules_for(source: str, mode: str, fmt: str, defaults: str = "{}") -> Rules:
    types = dict(ALWAYS[source])
    if fmt in ("noschemas", "flat"):
        types |= SCHEMALESS[source] | DECIMALS[(source, mode)]
    elif mode == "string":  # decimals are plain text on the wire: the rules say what they are
        types |= DECIMALS[(source, mode)]
    declared = ", ".join(f"{column}: {kind!r}" for column, kind in types.items())
    return parse_rules(
        f"""
version: 2
defaults: {defaults}
tables:
  {TABLE}:
    types: {{{declared}}}
    keys:
      - key: "{KEYS[0]}"
      - key: "{KEYS[1]}"
        fields: [id, d, dt, ts, amount]
      - key: "{KEYS[2]}"
        format: hash
"""
    )


@dataclass(frozen=True)
class Snapshot:
    """The table's rows as a driver returned them after one scenario."""

    rows: dict[int, dict[str, Any]]
    described: dict[str, ColumnType]
    zone: dt.tzinfo


def snapshots(source: str, mode: str) -> dict[str, Snapshot]:
    out = {}
    for line in (FIXTURES / source / "values" / mode / "rows.jsonl").read_text().splitlines():
        doc = json.loads(line)
        rows = [load_row(r) for r in doc["rows"]]
        described = described_types(doc["dialect"], [tuple(c) for c in doc["description"]])
        out[doc["scenario"]] = Snapshot({r["id"]: r for r in rows}, described, _zone(doc["zone"]))
    return out


def _zone(name: str) -> dt.tzinfo:
    if name[0] in "+-":
        hours, minutes = name[1:].split(":")
        offset = dt.timedelta(hours=int(hours), minutes=int(minutes))
        return dt.timezone(-offset if name[0] == "-" else offset)
    return ZoneInfo(name)


def records(source: str, mode: str, fmt: str) -> Iterator[tuple[SourceRecord, str, Parse | None]]:
    """``(record, scenario, parser)`` of one recording, in stream order."""
    folder = FIXTURES / source / "values" / mode
    parse: Parse | None = None
    if fmt == "avro":
        registered = json.loads((folder / "avro-schemas.json").read_text())
        schemas: dict[int, AvroSchema | str] = {
            int(sid): parse_schema(int(sid), text) for sid, text in registered.items()
        }
        parse = AvroParser(schemas)
    for offset, line in enumerate((folder / f"{fmt}.jsonl").read_text().splitlines()):
        doc = json.loads(line)

        def raw(text: str | None) -> bytes | None:
            if text is None:
                return None
            return base64.b64decode(text) if fmt == "avro" else text.encode()

        record = SourceRecord(doc["topic"], 0, offset, raw(doc["key"]), raw(doc["value"]))
        yield record, doc["scenario"], parse


def compare(source: str, mode: str, fmt: str, rules: Rules) -> int:
    """Assert every written value equals the helper's; the number of values compared."""
    found = snapshots(source, mode)
    codecs = {key: None for key in KEYS}
    compared = 0
    for record, scenario, parse in records(source, mode, fmt):
        routed = route(record, rules, parse=parse)
        if not isinstance(routed, Planned) or routed.event.table != TABLE:
            continue
        event = routed.event
        if event.op is Op.DELETE:
            continue
        assert event.after is not None
        snapshot = found[scenario]
        row = snapshot.rows[event.after["id"]]
        for op in routed.ops:
            if not isinstance(op, SetRow):
                continue  # the update moved the row off its old date key
            source_key = next(k for k in KEYS if op.key.startswith(k.split("{")[0]))
            codec = RowCodec(rules, TABLE, key=source_key, zone=snapshot.zone)
            codecs[source_key] = codec
            assert op.key == codec.key(row), (scenario, source_key)
            if isinstance(op.value, bytes):
                helper = codec.value(row, snapshot.described)
                assert op.value == helper, _difference(op.value, helper, scenario)
            else:
                assert dict(op.value) == codec.fields(row, snapshot.described), scenario
            compared += 1
    assert all(codecs.values()), "a key rule was never exercised"
    return compared


def _difference(worker: bytes, helper: bytes, scenario: str) -> str:
    ours, theirs = orjson.loads(worker), orjson.loads(helper)
    differing = {c: (ours.get(c), theirs.get(c)) for c in ours if ours.get(c) != theirs.get(c)}
    return f"{scenario}: worker vs helper differ in {differing or 'formatting'}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source", SOURCES)
def test_the_worker_writes_exactly_what_a_fill_from_the_driver_row_writes(
    source: str, mode: str, fmt: str
) -> None:
    compared = compare(source, mode, fmt, rules_for(source, mode, fmt))
    # Snapshot rows 1 and 2, insert, update, insert of nulls. A flattened update has no
    # before image, so the key on a non-key column (d) cannot move: it is rejected, as ever.
    assert compared == (4 if fmt == "flat" else 5) * len(KEYS)


@pytest.mark.parametrize("fmt", ["schemas", "avro", "flat"])
@pytest.mark.parametrize("source", SOURCES)
def test_choices_apply_alike_to_the_worker_and_the_fill(source: str, fmt: str) -> None:
    rules = rules_for(source, "precise", fmt, "{decimals: number, timestamps: epoch_ms}")
    assert compare(source, "precise", fmt, rules) == (4 if fmt == "flat" else 5) * len(KEYS)


@pytest.mark.parametrize("source", SOURCES)
def test_the_recorded_values_read_as_the_application_sees_them(source: str) -> None:
    rules = rules_for(source, "precise", "schemas")
    (value,) = [
        orjson.loads(op.value)
        for record, scenario, parse in records(source, "precise", "schemas")
        if scenario == "snapshot"
        and isinstance(routed := route(record, rules, parse=parse), Planned)
        and routed.event.after is not None
        and routed.event.after["id"] == 1
        for op in routed.ops
        if isinstance(op, SetRow) and op.key == "v:1"
    ]
    common = {
        "d": "2024-02-29",
        "amount": "12345.6789",
        "dbl": 2.2,
        "f": 1.25,
        "txt": "text ünï",
        "bits": "10101",
        "bit1": True,
    }
    if source == "mariadb":
        expected = {
            **common,
            "flag": True,
            "tm3": "13:14:15.678000",
            "dt3": "2024-02-29T13:14:15.678000",
            "dt6": "2024-02-29T13:14:15.123456",
            "ts": "2024-02-29T13:14:15Z",
            "price": "12.50",
            "whole": "12345678901234567890",
            "doc": {"b": 1, "a": [1, 2.5, "x"]},
            "bin": "AP8Q",
            "s": "red,blue",
            "g": "POLYGON((0 0,4 0,4 4,0 0))",
            "pt": "POINT(1.5 2)",
        }
    else:
        expected = {
            **common,
            "flag": True,
            "tm3": "13:14:15.678000",
            "ttz": "11:14:15.500000Z",
            "dt": "2024-02-29T13:14:15.123456",
            "ts": "2024-02-29T12:14:15.123456Z",
            "ts3": "2024-02-29T18:14:15.678000Z",
            "iv": "P1DT2H3M4.5S",
            "n": "1.5",  # NUMERIC without a scale: precise mode drops trailing zeros
            "doc": {"b": 1, "a": [1, 2.5]},
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "pt": "POINT(1.5 2)",
            "arr": [1, 2, 3],
        }
    assert {column: value[column] for column in expected} == expected


@pytest.mark.parametrize("source", SOURCES)
def test_without_the_decoding_the_worker_and_the_fill_disagree(source: str) -> None:
    """The contract has teeth: Debezium's wire values are not what the driver returns."""
    wire = parse_rules(f'tables:\n  {TABLE}:\n    keys: [{{key: "v:{{id}}"}}]\n')
    natural = rules_for(source, "precise", "schemas")
    found = snapshots(source, "precise")
    codec = RowCodec(natural, TABLE, key="v:{id}", zone=found["snapshot"].zone)
    differing: set[str] = set()
    for record, scenario, parse in records(source, "precise", "schemas"):
        routed = route(record, wire, parse=parse)
        if isinstance(routed, Planned) and routed.event.op is not Op.DELETE and routed.ops:
            (op,) = routed.ops
            assert isinstance(op, SetRow) and isinstance(op.value, bytes)
            snapshot = found[scenario]
            row = snapshot.rows[orjson.loads(op.value)["id"]]
            ours = orjson.loads(op.value)
            theirs = orjson.loads(codec.value(row, snapshot.described))
            differing |= {c for c in ours if ours[c] != theirs[c]}
    assert {"d", "amount", "dt3", "tm3"} <= differing


def test_the_session_time_zone_of_the_rows_matters() -> None:
    """Read in +02:00, MySQL TIMESTAMP values are two hours off if taken for UTC."""
    rules = rules_for("mariadb", "precise", "schemas")
    snapshot = snapshots("mariadb", "precise")["snapshot"]
    row = snapshot.rows[1]
    right = RowCodec(rules, TABLE, zone=snapshot.zone).row(row, snapshot.described)
    wrong = RowCodec(rules, TABLE).row(row, snapshot.described)
    assert right["ts"] == "2024-02-29T13:14:15Z"
    assert wrong["ts"] == "2024-02-29T15:14:15Z"
    assert right["dt"] == wrong["dt"] == "2024-02-29T13:14:15"  # DATETIME has no zone
