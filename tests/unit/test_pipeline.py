import orjson

from cdc_cache.errors import DecodeError, RenderError
from cdc_cache.events import Heartbeat, SourceRecord, Tombstone
from cdc_cache.pipeline import Control, Planned, Rejected, route
from cdc_cache.rules import parse_rules
from tests.workload import RULES_YAML, Workload

RULES = parse_rules(RULES_YAML)


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
