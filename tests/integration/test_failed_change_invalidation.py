"""On real Redis (single and Cluster): a change that cannot be applied as planned still
deletes every key it can render, version-gated with its tombstone, before it is
dead-lettered; a key whose version gate cannot run is deleted without it. A stale row
never survives a refused change."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from cdc_cache.core.errors import ApplyError
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.keys import ns
from cdc_cache.core.logs import JsonFormatter
from cdc_cache.core.retry import Backoff
from cdc_cache.dlq.entries import Failure, envelope
from cdc_cache.dlq.rejects import Rejects
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.tables import TableConfig, TableFallback
from cdc_cache.plan import invalidations
from cdc_cache.plan.cache_ops import CacheOp, DeleteKey, SetRow
from cdc_cache.plan.invalidations import KeyOutcome, Unreached
from cdc_cache.plan.route import Planned, Rejected, route
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import ApplyResult, RedisApplier
from cdc_cache.sink.writer import CacheWriter
from tests.hostile import KeptDeadLetters
from tests.workload import ITEMS_RULES_YAML, NOTIFY_RULES_YAML

pytestmark = pytest.mark.integration
FAST = Backoff(initial=0.05, maximum=0.2)

RULES = parse_rules(ITEMS_RULES_YAML)
NOTIFY_RULES = parse_rules(NOTIFY_RULES_YAML)
ROW = {"id": 1, "name": "lamp", "price": "10.00"}
# Rows keyed by a sensitive column: the rendered key itself must not be shown.
BY_NAME = """
defaults: {tombstone_ttl: 10m}
tables:
  inventory.items:
    keys:
      - key: "itemname:{name}"
        fields: [id, name, price]
"""
SENSITIVE_BY_NAME = parse_rules(BY_NAME.replace("    keys:", "    sensitive: [name]\n    keys:"))


def message(
    before: dict[str, Any] | None, after: dict[str, Any] | None, pos: int, table: str = "items"
) -> SourceRecord:
    source = {"connector": "mysql", "db": "inventory", "table": table}
    source |= {"file": "mysql-bin.000003", "pos": pos, "row": 0, "ts_ms": 1}
    op = "c" if before is None else "u"
    value = orjson.dumps({"before": before, "after": after, "op": op, "source": source})
    key = orjson.dumps({"id": (after or before or {})["id"]})
    return SourceRecord(f"dbserver1.inventory.{table}", 0, pos, key, value)


def routed(record: SourceRecord, rules: Rules = RULES, max_value_bytes: int | None = None) -> Any:
    return route(record, rules, 0, max_value_bytes)


class Writer:
    """A CacheWriter on ``redis`` keeping the failures it reports (logged and counted)."""

    def __init__(
        self, redis: Any, applier: RedisApplier | None = None, rules: Rules = RULES
    ) -> None:
        self.failures: list[Failure] = []
        self.rules = rules
        self.dead_letters = KeptDeadLetters()
        self.writer = CacheWriter(
            applier or RedisApplier(redis), FAST, reject=self.reject, sensitive=rules.sensitive
        )

    def reject(self, failures: Sequence[Failure]) -> None:
        Rejects(self.rules, self.dead_letters).report(failures)
        self.failures.extend(failures)

    def write(self, *items: Any) -> list[Any]:
        return self.writer.write(list(items))

    def only_failure(self) -> Failure:
        (failure,) = self.failures
        return failure


class Raising(RedisApplier):
    """Raises an error no check anticipates for any batch holding a ``kind`` op on ``key``."""

    def __init__(self, client: Any, key: str, kind: type[SetRow | DeleteKey]) -> None:
        super().__init__(client)
        self._key, self._kind = key, kind

    def apply(self, ops: Sequence[CacheOp]) -> ApplyResult:
        if any(isinstance(op, self._kind) and op.key == self._key for op in ops):
            msg = f"the client choked on {self._key}"
            raise RuntimeError(msg)
        return super().apply(ops)


def counted(table: str, outcome: KeyOutcome) -> float:
    labels = {"table": table, "outcome": outcome.value}
    return REGISTRY.get_sample_value("cdc_cache_failed_change_keys_total", labels) or 0


def cached(redis: Any, key: str) -> Any:
    raw = redis.get(key)
    return None if raw is None else orjson.loads(raw)


def test_a_change_the_rules_cannot_render_deletes_its_keys_with_tombstones(any_redis):
    """The issue's case: price dropped by a migration; item:1 must not keep serving 'lamp'."""
    writer = Writer(any_redis)
    writer.write(routed(message(None, ROW, 100)))
    assert cached(any_redis, "item:1") == ROW
    deleted_before = counted("inventory.items", KeyOutcome.DELETED)

    migrated = {"id": 1, "name": "lamp v2"}
    rejected = routed(message({"id": 1, "name": "lamp"}, migrated, 200))
    assert isinstance(rejected, Rejected) and rejected.error.kind == "render_failed"
    late = routed(message(None, {**ROW, "price": "9.00"}, 150))  # older, delivered late
    assert isinstance(late, Planned)

    # Without its invalidation the rejected change leaves the old row in place: stale.
    Writer(any_redis).write(replace(rejected, invalidation=invalidations.NOTHING))
    assert cached(any_redis, "item:1") == ROW

    assert writer.write(rejected) == []

    assert any_redis.exists("item:1") == 0
    assert [o.outcome for o in writer.write(late)] == ["stale"]  # stopped by the tombstone
    assert any_redis.exists("item:1") == 0
    failure = writer.only_failure()
    assert failure.invalidation is not None
    assert failure.invalidation.counts[KeyOutcome.DELETED] == 3  # item:1 and both names
    entry = envelope(failure, frozenset(), 0)
    assert entry["invalidation"]["deleted"] == 3
    assert entry["invalidation"]["unreached_keys"] == []
    assert counted("inventory.items", KeyOutcome.DELETED) - deleted_before == 3

    # Once the rules are fixed, replaying the change writes its row over its own tombstone.
    fixed = parse_rules(
        'tables:\n  inventory.items:\n    keys:\n      - key: "item:{id}"\n'
        "        fields: [id, name]\n"
    )
    assert [o.outcome for o in writer.write(routed(rejected.record, fixed))] == ["applied"]
    assert cached(any_redis, "item:1") == migrated


def test_a_value_too_large_deletes_the_keys_it_would_have_written(any_redis):
    writer = Writer(any_redis)
    writer.write(routed(message(None, ROW, 100)))

    rejected = routed(message(ROW, {**ROW, "name": "x" * 400}, 200), max_value_bytes=100)
    assert isinstance(rejected, Rejected) and rejected.error.kind == "value_too_large"
    writer.write(rejected)

    assert any_redis.exists("item:1") == 0
    assert writer.only_failure().invalidation.counts[KeyOutcome.DELETED] == 3  # type: ignore[union-attr]


def test_a_wrong_typed_version_key_still_gets_its_cache_key_deleted(any_redis):
    """The gate cannot run on this key: it is deleted without it, and reported."""
    writer = Writer(any_redis)
    writer.write(routed(message(None, ROW, 100)))
    any_redis.delete(ns().version_key("item:1"))
    any_redis.rpush(ns().version_key("item:1"), b"not a position")
    any_redis.set(ns().lease_key("item:1"), b"a fill in progress")
    change = routed(message(ROW, {**ROW, "price": "12.00"}, 200))
    assert isinstance(change, Planned)

    # Without the writer's salvage, Redis refuses the whole change and the old row stays.
    with pytest.raises(ApplyError, match="WRONGTYPE"):
        RedisApplier(any_redis).apply(change.ops)
    assert cached(any_redis, "item:1") == ROW

    unversioned_before = counted("inventory.items", KeyOutcome.UNVERSIONED)
    assert writer.write(change) == []

    assert any_redis.exists("item:1", ns().lease_key("item:1")) == 0
    failure = writer.only_failure()
    assert failure.error.kind == "redis_refused"
    assert failure.invalidation is not None
    assert failure.invalidation.counts[KeyOutcome.UNVERSIONED] == 1  # item:1, no gate
    # itemname:lamp, gated (on Cluster its call, in another slot, may have gone through
    # before the refusal: then this change's delete finds itself already applied)
    counts = failure.invalidation.counts
    assert counts[KeyOutcome.DELETED] + counts[KeyOutcome.SKIPPED] == 1
    assert any_redis.exists("itemname:lamp") == 0
    assert counted("inventory.items", KeyOutcome.UNVERSIONED) - unversioned_before == 1

    # Nothing can write the key while its version key is broken: the next change is
    # refused and deleted again, never left stale.
    writer.failures.clear()
    writer.write(routed(message(ROW, {**ROW, "price": "13.00"}, 300)))
    assert any_redis.exists("item:1") == 0
    assert writer.only_failure().error.kind == "redis_refused"


@pytest.mark.parametrize(
    "wrong", [ns().stream_key("inventory:north"), ns().channels], ids=["stream", "channel_registry"]
)
def test_a_wrong_typed_notification_key_still_gets_the_rows_keys_deleted(redis_client, wrong):
    """Single Redis only: notification rules are refused on Redis Cluster (README)."""
    row = {"id": 1, "sku_id": 7, "warehouse": "north", "qty": 3}
    writer = Writer(redis_client)
    first = routed(message(None, row, 100, "stock"), NOTIFY_RULES)
    writer.write(first)
    assert cached(redis_client, "stock:7:north") == {"sku_id": 7, "warehouse": "north", "qty": 3}
    redis_client.delete(wrong)
    redis_client.set(wrong, b"not a stream nor a set")

    change = routed(message(row, {**row, "qty": 4}, 200, "stock"), NOTIFY_RULES)
    assert isinstance(change, Planned)
    writer.write(change)

    assert redis_client.exists("stock:7:north") == 0
    failure = writer.only_failure()
    assert failure.error.kind == "redis_refused" and "WRONGTYPE" in failure.error.reason
    assert failure.invalidation is not None
    assert failure.invalidation.counts[KeyOutcome.DELETED] == 2  # the row's key, the sku key

    # The operator repairs the key and replays: the change lands and is announced.
    redis_client.delete(wrong)
    assert [o.outcome for o in writer.write(change)] == ["applied"]
    assert cached(redis_client, "stock:7:north")["qty"] == 4
    (_, last), *_ = redis_client.xrevrange(ns().stream_key("inventory:north"), count=1)
    assert orjson.loads(last[b"p"])["values"]["qty"] == 4


def test_a_batch_mixing_applied_and_rejected_changes_is_one_write(any_redis):
    writer = Writer(any_redis)
    rows = [{"id": n, "name": f"n{n}", "price": "1.00"} for n in range(1, 6)]
    writer.write(*(routed(message(None, row, 100 + n)) for n, row in enumerate(rows)))

    good = routed(message(rows[0], {**rows[0], "name": "m1"}, 200))
    bad = routed(message(rows[1], {"id": 2, "name": "m2"}, 201))  # price dropped
    also_good = routed(message(rows[2], {**rows[2], "name": "m3"}, 202))
    outcomes = writer.write(good, bad, also_good)

    assert [o.outcome for o in outcomes] == ["applied", "applied"]
    assert cached(any_redis, "item:1")["name"] == "m1"
    assert any_redis.exists("item:2") == 0
    assert cached(any_redis, "item:3")["name"] == "m3"
    assert writer.only_failure().event == bad.event


def test_failing_changes_make_their_table_fall_back_and_cap_its_new_writes(any_redis):
    holds = Holds()
    tables = TableFallback(["inventory.items"], holds, 5_000, TableConfig(failures=2))
    failures: list[Failure] = []
    writer = CacheWriter(RedisApplier(any_redis), FAST, reject=failures.extend, tables=tables)
    writer.write([routed(message(None, ROW, 100))])
    assert any_redis.pttl("item:1") > 3_600_000, "the rules' TTL while the table is healthy"

    writer.write([routed(message(ROW, {"id": 1, "name": f"v{n}"}, 200 + n)) for n in range(2)])
    assert [h.label for h in holds.active()] == ["table_failing:inventory.items"]

    writer.write([routed(message(None, {"id": 2, "name": "desk", "price": "3.00"}, 300))])
    assert 0 < any_redis.pttl("item:2") <= 5_000


def test_a_change_whose_apply_raises_anything_else_still_deletes_its_keys(any_redis):
    """Not a refusal Redis explains: an error no check anticipated. The change is set aside
    as unprocessable with its keys deleted (tombstones left); the batch's others apply."""
    desk = {"id": 2, "name": "desk", "price": "3.00"}
    Writer(any_redis).write(routed(message(None, ROW, 100)), routed(message(None, desk, 101)))
    change = routed(message(ROW, {**ROW, "price": "12.00"}, 200))
    applier = Raising(any_redis, "item:1", SetRow)
    with pytest.raises(RuntimeError):  # unhandled, the error would stop the flow
        applier.apply(change.ops)
    assert cached(any_redis, "item:1") == ROW

    writer = Writer(any_redis, applier)
    outcomes = writer.write(change, routed(message(desk, {**desk, "price": "4.00"}, 201)))

    assert [o.outcome for o in outcomes] == ["applied"]
    assert cached(any_redis, "item:2")["price"] == "4.00"
    assert any_redis.exists("item:1", "itemname:lamp") == 0
    failure = writer.only_failure()
    assert failure.error.kind == "unprocessable"
    assert failure.error.reason.startswith("applying raised RuntimeError")
    assert failure.invalidation is not None
    assert failure.invalidation.counts[KeyOutcome.DELETED] == 2  # item:1, itemname:lamp
    late = routed(message(None, ROW, 150))  # older, delivered late: stopped by the tombstone
    assert [o.outcome for o in Writer(any_redis).write(late)] == ["stale"]


def test_a_key_that_cannot_be_deleted_is_named_scrubbed_and_counted(any_redis, caplog):
    """A value_too_large whose key (rendered from a sensitive column) cannot be deleted:
    the entry and every log line name it with the value scrubbed, and it counts as
    unreached."""
    rules = SENSITIVE_BY_NAME
    Writer(any_redis, rules=rules).write(routed(message(None, ROW, 100), rules))
    rejected = routed(message(ROW, {**ROW, "price": "9" * 200}, 200), rules, max_value_bytes=100)
    assert isinstance(rejected, Rejected) and rejected.error.kind == "value_too_large"
    assert "itemname:lamp" in rejected.error.reason  # the reason quotes the rendered key
    writer = Writer(any_redis, Raising(any_redis, "itemname:lamp", DeleteKey), rules)
    unreached_before = counted("inventory.items", KeyOutcome.UNREACHED)

    with caplog.at_level(logging.INFO):
        writer.write(rejected)

    assert cached(any_redis, "itemname:lamp") == ROW  # left as it was, and said so
    failure = writer.only_failure()
    assert failure.invalidation is not None
    lost = Unreached("itemname:***redacted***", "deleting it raised RuntimeError")
    assert failure.invalidation.unreached == (lost,)
    assert counted("inventory.items", KeyOutcome.UNREACHED) - unreached_before == 1
    (entry,) = writer.dead_letters.entries
    assert "itemname:***redacted***" in entry["reason"]
    assert entry["invalidation"]["unreached_keys"][0]["key"] == "itemname:***redacted***"
    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert all("lamp" not in text for text in [orjson.dumps(entry).decode(), *lines])


@pytest.mark.parametrize(
    ("rules", "shown"),
    [(parse_rules(BY_NAME), "itemname:lamp"), (SENSITIVE_BY_NAME, "itemname:***redacted***")],
    ids=["plain", "sensitive"],
)
def test_the_line_of_a_key_deleted_without_its_version_hides_sensitive_values(
    any_redis, caplog, rules, shown
):
    writer = Writer(any_redis, rules=rules)
    writer.write(routed(message(None, ROW, 100), rules))
    any_redis.delete(ns().version_key("itemname:lamp"))
    any_redis.rpush(ns().version_key("itemname:lamp"), b"not a position")

    with caplog.at_level(logging.WARNING, logger="cdc_cache.writer"):
        writer.write(routed(message(ROW, {**ROW, "price": "12.00"}, 200), rules))

    assert any_redis.exists("itemname:lamp") == 0
    (line,) = [
        JsonFormatter().format(record)
        for record in caplog.records
        if record.getMessage().startswith("deleting a key without its version")
    ]
    assert orjson.loads(line)["key"] == shown
