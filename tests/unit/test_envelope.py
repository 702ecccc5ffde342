"""Contract tests for the decoder, over every recorded source and format.

The recordings (scripts/record-debezium-fixtures) hold real Debezium output. The three
formats of one source were converted from the same engine records, so the line field
``seq`` names the same change across them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest

from cdc_cache.core.errors import DecodeError, MissingPrimaryKey
from cdc_cache.core.events import ChangeEvent, Heartbeat, Op, SchemaChange, SourceRecord, Tombstone
from cdc_cache.core.positions import SourceKind, SourcePosition
from cdc_cache.source.envelope import decode

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "debezium"
SOURCES = ("mariadb", "postgres")
FORMATS = ("schemas", "noschemas", "flat")


@dataclass(frozen=True)
class Recorded:
    """One recorded line: the Kafka record plus the recorder's annotations."""

    record: SourceRecord
    seq: int
    scenario: str


def load(source: str, fmt: str) -> list[Recorded]:
    """The recorded stream of ``source`` in ``fmt``, as Kafka records in stream order."""
    lines = (FIXTURES / source / f"{fmt}.jsonl").read_text(encoding="utf-8").splitlines()
    out = []
    for offset, line in enumerate(lines):
        doc = json.loads(line)
        key, value = doc["key"], doc["value"]
        record = SourceRecord(
            topic=doc["topic"],
            partition=0,
            offset=offset,
            key=None if key is None else key.encode(),
            value=None if value is None else value.encode(),
        )
        out.append(Recorded(record, doc["seq"], doc["scenario"]))
    return out


def changes(source: str, fmt: str) -> dict[int, ChangeEvent]:
    """Decoded row changes by ``seq``."""
    decoded = {r.seq: decode(r.record) for r in load(source, fmt)}
    return {seq: d for seq, d in decoded.items() if isinstance(d, ChangeEvent)}


ALL = [(s, f) for s in SOURCES for f in FORMATS]


@pytest.mark.parametrize(("source", "fmt"), ALL)
def test_every_recorded_record_decodes(source: str, fmt: str) -> None:
    kinds = {type(decode(r.record)) for r in load(source, fmt)}
    assert {ChangeEvent, Heartbeat, Tombstone} <= kinds
    if source == "mariadb":
        assert SchemaChange in kinds


@pytest.mark.parametrize(("source", "fmt"), ALL)
def test_tables_ops_and_keys(source: str, fmt: str) -> None:
    events = changes(source, fmt)
    tables = {e.table for e in events.values()}
    assert tables == {"inventory.stock", "inventory.products"}
    for event in events.values():
        if event.op is Op.TRUNCATE:
            assert event.key == {}
        elif event.table == "inventory.stock":
            assert set(event.key) == {"sku_id", "warehouse"}
        else:
            assert set(event.key) == {"id"}
    ops = {e.op for e in events.values()}
    truncate = {Op.TRUNCATE} if fmt != "flat" else set()
    assert ops == {Op.READ, Op.CREATE, Op.UPDATE, Op.DELETE} | truncate
    kind = SourceKind.BINLOG if source == "mariadb" else SourceKind.POSTGRES
    assert all(e.position.kind is kind for e in events.values())


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fmt", ["noschemas", "flat"])
def test_formats_agree_with_the_schema_envelope(source: str, fmt: str) -> None:
    assert_same_changes(changes(source, "schemas"), changes(source, fmt))


def assert_same_changes(reference: dict[int, ChangeEvent], other: dict[int, ChangeEvent]) -> None:
    """``other`` (another format of the same engine records) decodes to the same changes."""
    # The flattening SMT drops TRUNCATE records; everything else is in every format.
    missing = {seq for seq in reference.keys() - other.keys()}
    assert all(reference[seq].op is Op.TRUNCATE for seq in missing)
    assert other.keys() <= reference.keys()
    for seq, event in other.items():
        ref = reference[seq]
        assert (event.table, event.op, event.key, event.position) == (
            ref.table,
            ref.op,
            ref.key,
            ref.position,
        )
        assert (event.committed_at_ms, event.emitted_at_ms, event.snapshot) == (
            ref.committed_at_ms,
            ref.emitted_at_ms,
            ref.snapshot,
        )
        assert event.image == ref.image
        if event.op is Op.DELETE:
            assert event.before == ref.before


@pytest.mark.parametrize(("source", "fmt"), ALL)
def test_delete_is_followed_by_a_tombstone_for_the_same_key(source: str, fmt: str) -> None:
    records = load(source, fmt)
    for i, recorded in enumerate(records):
        event = decode(recorded.record)
        if isinstance(event, ChangeEvent) and event.op is Op.DELETE:
            following = records[i + 1]
            tombstone = decode(following.record)
            assert tombstone == Tombstone(event.table)
            assert following.record.key is not None
            assert orjson.loads(following.record.key) == orjson.loads(recorded.record.key or b"")


@pytest.mark.parametrize(("source", "fmt"), ALL)
def test_snapshot_rows_are_flagged(source: str, fmt: str) -> None:
    for recorded in load(source, fmt):
        event = decode(recorded.record)
        if isinstance(event, ChangeEvent):
            assert event.snapshot is (event.op is Op.READ)
            assert event.committed_at_ms is not None and event.emitted_at_ms is not None


@pytest.mark.parametrize(("source", "fmt"), ALL)
def test_heartbeats_name_the_server(source: str, fmt: str) -> None:
    beats = [d for r in load(source, fmt) if isinstance(d := decode(r.record), Heartbeat)]
    assert beats
    assert all(b.server == "dbz" and isinstance(b.emitted_at_ms, int) for b in beats)


@pytest.mark.parametrize("fmt", FORMATS)
def test_schema_changes_carry_table_and_ddl(fmt: str) -> None:
    ddl = [d for r in load("mariadb", fmt) if isinstance(d := decode(r.record), SchemaChange)]
    alter = [d for d in ddl if d.ddl and d.ddl.startswith("ALTER TABLE")]
    assert alter == [
        SchemaChange(
            server="dbz",
            table="inventory.products",
            ddl="ALTER TABLE inventory.products ADD COLUMN color VARCHAR(20) NULL",
            columns={"inventory.products": ("id", "name", "description", "price", "color")},
            position=SourcePosition(0, 1, 7595, 0),
        )
    ]


@pytest.mark.parametrize(("source", "fmt"), ALL)
def test_nulls_and_awkward_key_values_survive(source: str, fmt: str) -> None:
    events = changes(source, fmt).values()
    nulls = next(e for e in events if e.key.get("sku_id") == 6 and e.op is Op.CREATE)
    assert nulls.after == {
        "sku_id": 6,
        "warehouse": "north",
        "qty": None,
        "price": None,
        "updated_at": None,
        "note": None,
    }
    warehouses = {e.key["warehouse"] for e in events if e.op is Op.CREATE and "warehouse" in e.key}
    assert {"wh:1 {a}*\n  b", "Zürich 倉庫 🚚"} <= warehouses


@pytest.mark.parametrize("fmt", ["schemas", "noschemas"])
def test_postgres_default_replica_identity_has_no_before_image_on_update(fmt: str) -> None:
    events = changes("postgres", fmt).values()
    products = [e for e in events if e.table == "inventory.products" and e.op is Op.UPDATE]
    stock = [e for e in events if e.table == "inventory.stock" and e.op is Op.UPDATE]
    assert products and all(e.before is None for e in products)
    assert stock and all(e.before is not None for e in stock)


@pytest.mark.parametrize("fmt", FORMATS)
def test_postgres_default_replica_identity_deletes_carry_only_the_primary_key(fmt: str) -> None:
    """Its other columns come null or empty ("" for a NOT NULL name): no image of the row."""
    events = changes("postgres", fmt).values()
    products = [e for e in events if e.table == "inventory.products" and e.op is Op.DELETE]
    stock = [e for e in events if e.table == "inventory.stock" and e.op is Op.DELETE]
    assert products and all(e.before is None and e.key for e in products)
    assert stock and all(e.before is not None and e.before["qty"] for e in stock)  # FULL


def test_a_binlog_delete_keeps_its_before_image_whatever_its_values() -> None:
    value = _envelope(op="d", before={"sku_id": 1, "warehouse": "east", "qty": 0, "note": ""})
    event = decode(SourceRecord("db.inv.stock", 0, 0, STOCK_KEY, value))
    assert isinstance(event, ChangeEvent)
    assert event.before == {"sku_id": 1, "warehouse": "east", "qty": 0, "note": ""}


def test_decimals_are_strings() -> None:
    event = next(iter(changes("mariadb", "schemas").values()))
    assert event.after is not None
    assert isinstance(event.after["price"], str | None)


# --- malformed input -------------------------------------------------------------------

STOCK_KEY = b'{"sku_id":1,"warehouse":"east"}'


def _envelope(**overrides: object) -> bytes:
    source = {"connector": "mysql", "db": "inventory", "table": "stock", "file": "b.000001"}
    body: dict[str, object] = {
        "before": None,
        "after": {"sku_id": 1, "warehouse": "east"},
        "source": {**source, "pos": 4, "row": 0, "ts_ms": 1},
        "op": "c",
        "ts_ms": 2,
    }
    body.update(overrides)
    return orjson.dumps(body)


def _record(value: bytes | None, key: bytes | None = STOCK_KEY) -> SourceRecord:
    return SourceRecord("dbz.inventory.stock", 3, 17, key, value)


def test_minimal_envelope_decodes() -> None:
    event = decode(_record(_envelope()), epoch=2)
    assert isinstance(event, ChangeEvent)
    assert (event.position.epoch, event.position.major, event.position.minor) == (2, 1, 4)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_envelope()[:-5], "not valid JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"a": 1}', "neither 'op'"),
        (_envelope(op="x"), "op 'x'"),
        (_envelope(op=None), "op None"),
        (_envelope(source=None), "no 'source'"),
        (_envelope(source={"connector": "oracle"}), "source.connector"),
        (_envelope(after=[1]), "'after' is a list"),
        (_envelope(ts_ms="soon"), "ts_ms is 'soon'"),
        (
            _envelope(source={"connector": "mysql", "db": "i", "table": "t", "file": "x"}),
            "source.file",
        ),
        (
            _envelope(source={"connector": "postgresql", "schema": "s", "table": "t"}),
            "source.lsn",
        ),
        (_envelope(source={"connector": "mysql", "table": "t"}), "database/schema"),
    ],
)
def test_malformed_values_raise_decode_error_naming_the_record(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(_record(value))
    assert info.value.record is not None
    assert "dbz.inventory.stock[3]@17" in str(info.value)
    assert reason in str(info.value)


@pytest.mark.parametrize("key", [None, b"null", b"{}", b"5"])
def test_row_change_without_key_is_missing_primary_key(key: bytes | None) -> None:
    with pytest.raises(MissingPrimaryKey) as info:
        decode(_record(_envelope(), key=key))
    assert "dbz.inventory.stock[3]@17" in str(info.value)
    assert "inventory.stock" in info.value.reason


def test_malformed_key_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="key is not valid JSON"):
        decode(_record(_envelope(), key=b'{"sku_id":'))


def test_tombstone_needs_a_key_and_is_counted_even_where_nothing_names_its_table() -> None:
    with pytest.raises(DecodeError, match="null key and null value"):
        decode(_record(None, key=None))
    assert decode(SourceRecord("stock", 0, 0, STOCK_KEY, None)) == Tombstone(None)
    assert decode(SourceRecord("stock", 0, 0, b"{not json", None)) == Tombstone(None)


def test_heartbeat_without_value_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="heartbeat"):
        decode(SourceRecord("__debezium-heartbeat.dbz", 0, 0, b"{}", None))


@pytest.mark.parametrize("source", SOURCES)
def test_changes_in_rewrite_mode_and_envelopes_do_not_hide_deletes(source: str) -> None:
    """The recordings' SMT rewrites deletes: every flattened record carries ``__deleted``."""
    for fmt in FORMATS:
        events = changes(source, fmt)
        assert events and not any(e.deletes_hidden for e in events.values()), fmt


@pytest.mark.parametrize("source", SOURCES)
def test_a_flattened_record_without_deleted_applies_and_says_deletes_are_hidden(
    source: str,
) -> None:
    """The SMT in ``tombstone`` or ``drop`` mode writes the same upserts without
    ``__deleted`` (and no delete record): each still decodes to its change, marked."""
    checked = 0
    for recorded in load(source, "flat"):
        value = recorded.record.value
        if value is None or b'"__op"' not in value:
            continue
        row = orjson.loads(value)
        assert row["__deleted"] == ("true" if row["__op"] == "d" else "false")
        if row["__op"] == "d":
            continue  # those modes write none
        del row["__deleted"]
        event = decode(replace(recorded.record, value=orjson.dumps(row)))
        assert isinstance(event, ChangeEvent) and event.deletes_hidden
        assert replace(event, deletes_hidden=False) == decode(recorded.record)
        checked += 1
    assert checked >= 10


def test_flattened_record_without_connector_says_which_field_to_add() -> None:
    value = orjson.dumps({"sku_id": 1, "__op": "c", "__table": "stock"})
    with pytest.raises(DecodeError, match=r"add .connector. to add\.fields"):
        decode(_record(value))


@pytest.mark.parametrize("source", SOURCES)
def test_a_change_carries_the_logical_types_its_schema_names(source: str) -> None:
    """Read once per schema: every change of one table shares the same types object."""
    stock = [e for e in changes(source, "schemas").values() if e.table == "inventory.stock"]
    kinds = {e.types for e in stock}
    assert len(kinds) == 1
    (types,) = kinds
    assert types is not None
    assert dict((c, str(t)) for c, t in types.columns)["updated_at"] == "timestamp_ms"
    assert len({id(e.types) for e in stock}) <= 2  # the first full parse, then the prefix's
    assert all(e.types is None for e in changes(source, "noschemas").values())
