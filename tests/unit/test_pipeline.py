import orjson

from cdc_cache.errors import DecodeError, RenderError, ValueTooLarge
from cdc_cache.events import Heartbeat, SourceRecord, Tombstone
from cdc_cache.ops import SetRow, ValueFormat
from cdc_cache.pipeline import Control, Planned, Rejected, route, value_size
from cdc_cache.positions import SourcePosition
from cdc_cache.rules import parse_rules
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
