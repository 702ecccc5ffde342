import orjson
import pytest

from cdc_cache.core.errors import (
    DecodeError,
    RedisUnavailable,
    RenderError,
    Unprocessable,
    ValueTooLarge,
)
from cdc_cache.core.events import ChangeEvent, Heartbeat, SourceRecord, Tombstone
from cdc_cache.core.nesting import ENCODER_MAX_DEPTH
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import SetRow, ValueFormat
from cdc_cache.plan.route import Control, Planned, Rejected, route, value_size
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.source.natural import TableValues
from tests.hostile import nested
from tests.workload import RULES_YAML, Workload

RULES = parse_rules(RULES_YAML)
POSITION = SourcePosition(0, 1, 4, 0)


def record(key: bytes | None, value: bytes | None, topic: str = "dbserver1.inventory.stock"):
    return SourceRecord(topic, 2, 41, key, value)


def test_a_change_is_planned():
    (message,) = Workload(seed=3).transactions(1)[0]
    routed = route(record(message.key, message.value), RULES)
    assert isinstance(routed, Planned)
    assert routed.event.table == "inventory.stock"
    assert [type(op).__name__ for op in routed.ops] == ["SetRow", "DeleteKey"]


def test_undecodable_message_is_rejected_with_its_coordinates():
    routed = route(record(b'{"id": 1}', b"{not json"), RULES)
    assert isinstance(routed, Rejected)
    assert isinstance(routed.error, DecodeError)
    assert routed.record.where() == "dbserver1.inventory.stock[2]@41"
    assert "dbserver1.inventory.stock[2]@41" in str(routed.error)


def test_rule_that_cannot_render_is_rejected_not_raised():
    (message,) = Workload(seed=3).transactions(1)[0]
    envelope = orjson.loads(message.value)
    del envelope["after"]["warehouse"]
    routed = route(record(message.key, orjson.dumps(envelope)), RULES)
    assert isinstance(routed, Rejected)
    assert isinstance(routed.error, RenderError)
    assert "needs column 'warehouse'" in routed.error.reason


def test_tombstones_and_heartbeats_are_control_records():
    tombstone = route(record(b'{"id": 1}', None), RULES)
    heartbeat = route(
        record(
            b'{"serverName": "dbserver1"}', b'{"ts_ms": 5}', topic="__debezium-heartbeat.dbserver1"
        ),
        RULES,
    )
    assert isinstance(tombstone, Control) and isinstance(tombstone.item, Tombstone)
    assert isinstance(heartbeat, Control) and isinstance(heartbeat.item, Heartbeat)


def test_a_value_above_the_size_limit_is_poison_with_its_size_and_the_fix():
    (message,) = Workload(seed=3).transactions(1)[0]
    planned = route(record(message.key, message.value), RULES)
    assert isinstance(planned, Planned)
    size = len(planned.ops[0].value)  # type: ignore[union-attr,arg-type]

    assert isinstance(route(record(message.key, message.value), RULES, 0, size), Planned)
    routed = route(record(message.key, message.value), RULES, 0, size - 1)
    assert isinstance(routed, Rejected)
    assert isinstance(routed.error, ValueTooLarge)
    assert f"is {size} bytes, above max_value_bytes ({size - 1})" in routed.error.reason
    assert routed.event == planned.event  # the dead letter names table, key and position


def test_value_size_of_a_hash_counts_field_names_and_values():
    row = SetRow("k", POSITION, (("a", "xy"), ("bb", "é")), ValueFormat.HASH, 1, 1)
    assert value_size(row) == 1 + 2 + 2 + 2


def with_column(column: str, raw: bytes) -> SourceRecord:
    """The first workload change with ``column`` of its after image replaced by ``raw``."""
    (message,) = Workload(seed=3).transactions(1)[0]
    doc = orjson.loads(message.value)
    doc["after"][column] = "@@"
    return record(message.key, orjson.dumps(doc).replace(b'"@@"', raw))


@pytest.mark.parametrize(
    ("column", "depth", "raised"),
    [
        ("qty", 300, "TypeError"),  # a projected column the encoder cannot write
        ("sku_id", 1000, "RecursionError"),  # a key column: rendering it recurses
        ("warehouse", 1020, "RecursionError"),
    ],
)
def test_a_change_nested_too_deeply_is_rejected_with_the_error_and_the_depth(
    column: str, depth: int, raised: str
):
    routed = route(with_column(column, nested(depth)), RULES, 0, 1 << 20)
    assert isinstance(routed, Rejected)
    assert isinstance(routed.error, Unprocessable)
    assert routed.error.reason.startswith(f"planning raised {raised}")
    assert f"more than {ENCODER_MAX_DEPTH} levels deep" in routed.error.reason
    assert routed.event is not None and routed.record.offset == 41


@pytest.mark.parametrize(
    ("column", "depth", "deleted", "unreached"),
    [
        ("qty", 300, ["stock:39:west", "sku:39:availability"], []),
        ("sku_id", 1000, [], ["stock:{sku_id}:{warehouse}", "sku:{sku_id}:availability"]),
        ("warehouse", 1020, ["sku:39:availability"], ["stock:{sku_id}:{warehouse}"]),
    ],
)
def test_a_change_whose_planning_raised_still_deletes_the_keys_its_images_render(
    column: str, depth: int, deleted: list[str], unreached: list[str]
):
    """An unanticipated error is poison like any other: its keys are invalidated too.

    A key no image can render (its column nests too deep to print) is named, never guessed.
    """
    routed = route(with_column(column, nested(depth)), RULES, 0, 1 << 20)
    assert isinstance(routed, Rejected) and isinstance(routed.error, Unprocessable)
    assert [d.key for d in routed.invalidation.deletes] == deleted
    assert [u.key for u in routed.invalidation.unreached] == unreached
    assert all("raised RecursionError" in u.why for u in routed.invalidation.unreached)


def test_nesting_the_encoder_writes_is_planned():
    routed = route(with_column("qty", nested(200)), RULES)
    assert isinstance(routed, Planned)


def test_any_error_a_message_raises_is_its_rejection_and_transient_ones_are_raised():
    (message,) = Workload(seed=3).transactions(1)[0]

    def overflowing(data: bytes, what: str) -> object:
        raise OverflowError("a parser's own failure")

    routed = route(record(message.key, message.value), RULES, parse=overflowing)
    assert isinstance(routed, Rejected) and isinstance(routed.error, Unprocessable)
    assert routed.error.reason == "decoding raised OverflowError: a parser's own failure"
    assert isinstance(routed.error.__cause__, OverflowError)

    def unreachable(data: bytes, what: str) -> object:
        raise RedisUnavailable("a server to wait for, not a bad message")

    with pytest.raises(RedisUnavailable):
        route(record(message.key, message.value), RULES, parse=unreachable)


NATURAL = parse_rules(
    """
version: 2
tables:
  shop.orders:
    types: {placed_on: date, total: decimal(2)}
    keys:
      - key: "order:{id}"
      - key: "day:{placed_on}:{id}"
        action: delete
    notify:
      channel: "orders"
      fields: [id, placed_on, total]
"""
)


def order(after: dict[str, object]) -> SourceRecord:
    """A schemaless change of shop.orders (the rules declare its column types)."""
    source = {"connector": "mysql", "db": "shop", "table": "orders", "file": "b.000001",
              "pos": 4, "row": 0, "ts_ms": 1}  # fmt: skip
    value = {"op": "c", "before": None, "after": after, "source": source, "ts_ms": 2}
    return SourceRecord("dbz.shop.orders", 0, 9, b'{"id": 7}', orjson.dumps(value))


def test_values_are_decoded_before_planning_keys_values_and_notifications_alike():
    routed = route(order({"id": 7, "placed_on": 20786, "total": "BOI="}), NATURAL)
    assert isinstance(routed, Planned)
    assert routed.event.after == {"id": 7, "placed_on": "2026-11-29", "total": "12.50"}
    set_row, notify, delete = routed.ops
    assert isinstance(set_row, SetRow)
    assert set_row.value == b'{"id":7,"placed_on":"2026-11-29","total":"12.50"}'
    assert orjson.loads(notify.payload)["values"] == {  # type: ignore[union-attr]
        "id": 7,
        "placed_on": "2026-11-29",
        "total": "12.50",
    }
    assert delete.key == "day:2026-11-29:7"  # type: ignore[union-attr]


def test_a_value_that_does_not_decode_is_rejected_with_what_still_decodes():
    routed = route(order({"id": 7, "placed_on": 20786, "total": "%%"}), NATURAL)
    assert isinstance(routed, Rejected)
    assert isinstance(routed.error, RenderError)
    assert routed.record.offset == 9
    assert "column 'total' (decimal(2)) in the after image cannot be decoded" in (
        routed.error.reason
    )
    assert routed.event is not None
    assert routed.event.after == {"id": 7, "placed_on": "2026-11-29"}  # keys can still render


def test_a_value_that_does_not_decode_still_deletes_the_keys_the_others_render():
    routed = route(order({"id": 7, "placed_on": "someday", "total": "BOI="}), NATURAL)
    assert isinstance(routed, Rejected)
    assert [d.key for d in routed.invalidation.deletes] == ["order:7"]
    (unreached,) = routed.invalidation.unreached
    assert unreached.key == "day:{placed_on}:{id}"
    assert "'placed_on' is absent from the after image" in unreached.why


def test_decoding_values_that_raised_renders_keys_only_from_columns_cached_as_they_came(
    monkeypatch: pytest.MonkeyPatch,
):
    """A decoded column's wire value would render a key the cache does not hold."""

    def broken(self: TableValues, event: ChangeEvent) -> ChangeEvent:
        raise RuntimeError("a converter bug")

    monkeypatch.setattr(TableValues, "event", broken)
    routed = route(order({"id": 7, "placed_on": 20786, "total": "BOI="}), NATURAL)
    assert isinstance(routed, Rejected) and isinstance(routed.error, Unprocessable)
    assert routed.error.reason.startswith("decoding values raised RuntimeError")
    assert [d.key for d in routed.invalidation.deletes] == ["order:7"]  # not day:20786:7
    assert [u.key for u in routed.invalidation.unreached] == ["day:{placed_on}:{id}"]
