"""Notifications written by the apply script: exactly when the host write applied, in the
same script call, into a bounded stream per channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.errors import ApplyError, ConfigError
from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.keys import CHANNELS_KEY, stream_key
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import Notify
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier, check_notifications
from cdc_cache.sink.encoding import Outcome
from cdc_cache.tools.devstack.redis import RedisClusterServers
from tests.workload import NOTIFY_RULES_YAML

pytestmark = pytest.mark.integration

A, S, D = Outcome.APPLIED, Outcome.STALE, Outcome.DUPLICATE
RULES = parse_rules(NOTIFY_RULES_YAML)


def change(n: int, qty: int, warehouse: str = "north", op: Op = Op.UPDATE) -> ChangeEvent:
    row = {"id": 1, "sku_id": 7, "warehouse": warehouse, "qty": qty}
    before = {**row, "qty": qty - 1} if op is Op.UPDATE else None
    return ChangeEvent("inventory.stock", op, before, row, {"id": 1}, SourcePosition(0, 1, n, 0), n)


def entries(redis: Any, channel: str) -> list[dict[str, Any]]:
    return [orjson.loads(f[b"p"]) for _, f in redis.xrange(stream_key(channel))]


def test_each_applied_change_notifies_once_replays_and_stale_changes_never(
    redis_client: Any,
) -> None:
    applier = RedisApplier(redis_client)
    first, second = plan(change(10, 1), RULES), plan(change(20, 2), RULES)
    assert list(applier.apply(first).outcomes) == [A, A, A]
    assert list(applier.apply(first).outcomes) == [D, D, D]  # duplicate
    assert list(applier.apply(second).outcomes) == [A, A, A]
    assert list(applier.apply(first).outcomes) == [S, S, S]  # replayed after a newer one
    assert [e["values"]["qty"] for e in entries(redis_client, "inventory:north")] == [1, 2]
    assert redis_client.smembers(CHANNELS_KEY) == {b"inventory:north"}


def test_notification_stays_with_its_host_when_a_batch_is_split(redis_client: Any) -> None:
    ops = [op for n in range(1, 40) for op in plan(change(n, n), RULES)]
    applier = RedisApplier(redis_client, max_ops_per_call=2, max_args_per_call=9)
    applier.apply(ops)
    applier.apply(ops)
    assert [e["values"]["qty"] for e in entries(redis_client, "inventory:north")] == list(
        range(1, 40)
    )


def test_stream_is_bounded_by_maxlen(redis_client: Any) -> None:
    applier = RedisApplier(redis_client)
    for n in range(1, 400):
        applier.apply(plan(change(n, n), RULES))
    assert 50 <= redis_client.xlen(stream_key("inventory:north")) < 200
    assert entries(redis_client, "inventory:north")[-1]["values"]["qty"] == 399


def test_wrong_typed_stream_fails_before_any_write(redis_client: Any) -> None:
    redis_client.set(stream_key("inventory:north"), b"x")
    with pytest.raises(ApplyError, match="WRONGTYPE"):
        RedisApplier(redis_client).apply(plan(change(5, 1), RULES))
    assert redis_client.exists("stock:7:north") == 0


def test_notification_without_a_host_is_refused(redis_client: Any) -> None:
    with pytest.raises(ApplyError, match="needs a key op before it"):
        RedisApplier(redis_client).apply([Notify("inventory:x", b"{}", 10)])
    assert redis_client.exists(stream_key("inventory:x")) == 0


def test_worker_with_notification_rules_refuses_to_start_on_redis_cluster(
    tmp_path: Path, redis_cluster: RedisClusterServers
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(NOTIFY_RULES_YAML)
    args = ["run", "--rules", str(rules), "--topic", "db.inventory.stock"]
    result = CliRunner().invoke(main, [*args, "--redis-url", redis_cluster.address()])
    assert result.exit_code == 2, result.output
    assert "notification rules need a single Redis server" in result.output
    assert "remove the tables' 'notify:' sections" in result.output


def test_redis_cluster_refuses_notification_rules(redis_cluster_client: Any) -> None:
    with pytest.raises(ConfigError, match="notification rules need a single Redis server"):
        check_notifications(redis_cluster_client)
    with pytest.raises(ApplyError, match="single Redis server"):
        RedisApplier(redis_cluster_client).apply(plan(change(5, 1), RULES))
