"""Contract tests for records whose topics routing changed, over real recorded output.

``scripts/record-debezium-fixtures --routed`` recorded one run of the inventory scenarios
under the dotted topic prefix ``prod.eu.dbz``, through the transforms users configure
(``ByLogicalTableRouter`` into one topic ``inventory.cdc``, ``RegexRouter`` renames, and
``ExtractNewRecordState`` with and without the fields that name the table). Every format
was converted from the same engine record, so ``seq`` names the same change in each.
"""

from __future__ import annotations

import orjson
import pytest

from cdc_cache.core.errors import DecodeError
from cdc_cache.core.events import ChangeEvent, Heartbeat, Op, SchemaChange, SourceRecord, Tombstone
from cdc_cache.plan.route import Control, Planned, Rejected, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.source.envelope import decode, table_hint
from cdc_cache.source.topics import ROUTER_KEY_FIELDS
from tests.unit.test_envelope import SOURCES, Recorded, assert_same_changes, load

SERVER = "prod.eu.dbz"
# Formats in which every record names its table (or needs not: tombstones, heartbeats).
NAMED = ("shared", "shared-flat", "renamed", "dotted-flat")
# Flattened without db/schema and table, on topics whose names cannot say it.
UNNAMED = ("shared-flat-nokey", "renamed-flat")
FIX = {"mariadb": "add 'db,table'", "postgres": "add 'schema,table'"}


def routed(source: str, fmt: str) -> list[Recorded]:
    return load(source, f"routed/{fmt}")


def every_routed_record() -> list[SourceRecord]:
    """Every routed recording's records (seeds for the decoder's fuzzing)."""
    return [r.record for s in SOURCES for f in (*NAMED, *UNNAMED) for r in routed(s, f)]


def changes(source: str, fmt: str) -> dict[int, ChangeEvent]:
    decoded = {r.seq: decode(r.record) for r in routed(source, fmt)}
    return {seq: d for seq, d in decoded.items() if isinstance(d, ChangeEvent)}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fmt", NAMED)
def test_every_routed_record_decodes_as_what_it_is(source: str, fmt: str) -> None:
    kinds = {type(decode(r.record)) for r in routed(source, fmt)}
    assert {ChangeEvent, Heartbeat, Tombstone} <= kinds
    if source == "mariadb":
        assert SchemaChange in kinds


def test_the_recordings_route_as_their_names_say() -> None:
    topics = {fmt: {r.record.topic for r in routed("mariadb", fmt)} for fmt in NAMED}
    assert topics["shared"] == {"inventory.cdc", f"__debezium-heartbeat.{SERVER}", SERVER}
    assert topics["renamed"] == {
        "inventory_stock",
        "inventory_products",
        f"heartbeats.{SERVER}",
        SERVER,
    }
    assert f"{SERVER}.inventory.stock" in topics["dotted-flat"]
    shared_keys = [
        orjson.loads(r.record.key) for r in routed("mariadb", "shared") if r.record.key
    ]
    assert any(ROUTER_KEY_FIELDS[0] in key for key in shared_keys)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fmt", ["shared-flat", "renamed", "dotted-flat"])
def test_tables_keys_and_positions_do_not_depend_on_the_topic(source: str, fmt: str) -> None:
    reference = changes(source, "shared")  # tables from source blocks, keys with the field
    assert {e.table for e in reference.values()} == {"inventory.stock", "inventory.products"}
    assert_same_changes(reference, changes(source, fmt))


@pytest.mark.parametrize("source", SOURCES)
def test_the_router_key_field_is_no_primary_key_column(source: str) -> None:
    events = changes(source, "shared")
    assert events
    for event in events.values():
        assert not set(event.key) & set(ROUTER_KEY_FIELDS)
        if event.table == "inventory.stock":
            assert set(event.key) == {"sku_id", "warehouse"}
        elif event.op is not Op.TRUNCATE:
            assert set(event.key) == {"id"}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("fmt", "named"),
    [("shared", True), ("shared-flat", True), ("dotted-flat", True), ("renamed", False)],
)
def test_tombstones_take_their_table_from_the_key_field_or_a_table_topic(
    source: str, fmt: str, named: bool
) -> None:
    records = routed(source, fmt)
    tombstones = 0
    for i, recorded in enumerate(records):
        event = decode(recorded.record)
        if isinstance(event, ChangeEvent) and event.op is Op.DELETE:
            tombstone = decode(records[i + 1].record)
            assert tombstone == Tombstone(event.table if named else None)
            tombstones += 1
    assert tombstones >= 2


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fmt", ["shared", "renamed"])
def test_heartbeats_are_known_by_their_shape_and_name_the_dotted_server(
    source: str, fmt: str
) -> None:
    beats = [
        (r.record.topic, decode(r.record))
        for r in routed(source, fmt)
        if r.record.key and b"serverName" in r.record.key
    ]
    assert beats
    for _topic, beat in beats:
        assert isinstance(beat, Heartbeat) and beat.server == SERVER
    if fmt == "renamed":
        assert {topic for topic, _ in beats} == {f"heartbeats.{SERVER}"}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fmt", UNNAMED)
def test_flattened_records_that_nothing_names_are_rejected_with_the_fix(
    source: str, fmt: str
) -> None:
    rejected = 0
    for recorded in routed(source, fmt):
        value = recorded.record.value
        if value is None or b'"__op"' not in value:
            decode(recorded.record)  # tombstones, heartbeats, schema changes: still fine
            continue
        with pytest.raises(DecodeError, match=FIX[source]) as caught:
            decode(recorded.record)
        assert "routed or renamed" in str(caught.value)
        rejected += 1
    assert rejected >= 10


@pytest.mark.parametrize("source", SOURCES)
def test_flattened_records_without_table_fields_take_it_from_the_router_key_field(
    source: str,
) -> None:
    """ByLogicalTableRouter's key field alone names the table of a bare flattened record."""
    reference = changes(source, "shared-flat")
    checked = 0
    for recorded in routed(source, "shared-flat"):
        value = recorded.record.value
        if value is None or b'"__op"' not in value:
            continue
        row = orjson.loads(value)
        bare = {k: v for k, v in row.items() if k not in ("__db", "__schema", "__table")}
        record = SourceRecord(
            "inventory.cdc", 0, recorded.record.offset, recorded.record.key, orjson.dumps(bare)
        )
        assert decode(record) == reference[recorded.seq]
        # Without the key field, the shared topic's name says nothing: rejected, not guessed.
        key = {
            k: v
            for k, v in orjson.loads(recorded.record.key or b"{}").items()
            if k not in ROUTER_KEY_FIELDS
        }
        with pytest.raises(DecodeError, match=FIX[source]):
            decode(SourceRecord("inventory.cdc", 0, 0, orjson.dumps(key), orjson.dumps(bare)))
        checked += 1
    assert checked >= 10


def test_a_three_part_router_target_does_not_name_a_bare_flattened_record() -> None:
    """A topic shaped like a table's that a router fills is read by its key field."""
    key = orjson.dumps({"id": 1, ROUTER_KEY_FIELDS[0]: "db1.shop.orders"})
    value = orjson.dumps(
        {
            "id": 1,
            "__deleted": "false",
            "__op": "c",
            "__connector": "mysql",
            "__file": "b.000001",
            "__pos": 4,
        }
    )
    event = decode(SourceRecord("db1.shop.all_tables", 0, 0, key, value))
    assert isinstance(event, ChangeEvent)
    assert (event.table, dict(event.key)) == ("shop.orders", {"id": 1})
    assert decode(SourceRecord("db1.shop.all_tables", 0, 1, key, None)) == Tombstone("shop.orders")


RULES = parse_rules(
    """
tables:
  inventory.stock:
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [sku_id, warehouse, qty]
  inventory.products:
    keys:
      - key: "product:{id}"
        fields: [id, name, price]
"""
)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fmt", NAMED)
def test_a_routed_stream_costs_no_dead_letter(source: str, fmt: str) -> None:
    outcomes = [route(r.record, RULES) for r in routed(source, fmt)]
    assert not [o for o in outcomes if isinstance(o, Rejected)]
    planned = [o for o in outcomes if isinstance(o, Planned)]
    assert {p.event.table for p in planned} == {"inventory.stock", "inventory.products"}
    assert any(isinstance(o, Control) and isinstance(o.item, Tombstone) for o in outcomes)


@pytest.mark.parametrize("source", SOURCES)
def test_changes_name_their_connector(source: str) -> None:
    assert {e.server for e in changes(source, "shared").values()} == {SERVER}


@pytest.mark.parametrize(
    ("topic", "key", "label"),
    [
        ("prod.eu.dbz.inventory.stock", b'{"id": 1}', "inventory.stock"),
        ("db1.inventory.all", b'{"id": 1, "__dbz__physicalTableIdentifier": "db1.inv.a"}', "inv.a"),
        ("inventory.cdc", b'{"id": 1}', "inventory.cdc"),
        ("inventory_stock", b"\x00\x00\x00\x00\x01avro", "inventory_stock"),
        ("inventory.cdc", None, "inventory.cdc"),
    ],
)
def test_an_undecodable_record_is_labelled_by_what_it_shows(
    topic: str, key: bytes | None, label: str
) -> None:
    assert table_hint(SourceRecord(topic, 0, 0, key, b"{not json")) == label
