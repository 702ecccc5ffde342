"""A table falling back to ttl mode on its own, on real Redis (single and Cluster): the
follower that sees it fail tells the leader, the leader publishes it in ``cdc:mode`` and
gives that table's keys the fallback TTL, every process caps its writes, the other tables
and the cache's own mode stay in ``cdc``, and it all returns once its changes apply."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.keys import ns
from cdc_cache.dlq.entries import Failure
from cdc_cache.fallback.runtime import ModeRuntime
from cdc_cache.mode.controller import ModeConfig
from cdc_cache.mode.lag import LagTracker
from cdc_cache.mode.tables import TableConfig

pytestmark = pytest.mark.integration
FALLBACK_MS = 30_000
PREFIXES = {"db.items": ["item:"], "db.stock": ["stock:"]}


def runtime(client: Any, process: int, clock: list[float]) -> ModeRuntime:
    return ModeRuntime(
        client=client,
        tracker=LagTracker(lambda: clock[0] * 1000),
        config=ModeConfig(slo_s=60, recover_s=15, window_s=30),
        fallback_ttl_ms=FALLBACK_MS,
        prefixes=["item:", "stock:"],
        process=process,
        processes=2,
        clock=lambda: clock[0],
        table_prefixes=PREFIXES,
        table_config=TableConfig(failures=3, window_s=10),
    )


def failure(table: str) -> Failure:
    return Failure(RenderError("column gone", SourceRecord("p.db.items", 0, 1, None, b"")), table)


def record(client: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(ns().mode).items()}


def gauge(table: str) -> float | None:
    return REGISTRY.get_sample_value("cdc_cache_table_fallback", {"table": table})


def wait_for(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_failing_table_falls_back_alone_across_processes_and_returns(any_redis):
    for n in range(50):
        any_redis.set(f"item:{n}", b"{}")
        any_redis.set(f"stock:{n}", b"{}")
    clock = [1000.0]
    leader, follower = runtime(any_redis, 0, clock), runtime(any_redis, 1, clock)
    try:
        follower.tables.observe({}, [failure("db.items")] * 3)
        follower.tick()
        leader.tick()

        published = record(any_redis)
        assert published["mode"] == "cdc", "one table failing leaves the cache in cdc mode"
        assert orjson.loads(published["holds"]) == ["table_failing:db.items"]
        assert list(orjson.loads(published["tables"])) == ["db.items"]
        assert orjson.loads(published["ttl_prefixes"]) == ["item:"]
        assert leader.tables.caps() == {"db.items": FALLBACK_MS}
        assert leader.view()["tables"] == orjson.loads(published["tables"])
        assert gauge("db.items") == 1
        wait_for(
            "the failing table's keys get the fallback TTL",
            lambda: all(0 < any_redis.pttl(f"item:{n}") <= FALLBACK_MS for n in range(50)),
        )
        assert all(any_redis.pttl(f"stock:{n}") == -1 for n in range(50)), "other tables keep"

        follower.tick()
        assert follower.tables.caps() == {"db.items": FALLBACK_MS}

        clock[0] += 11  # no failure for a window, then a batch applies
        follower.tables.observe({"db.items": 2}, [])
        follower.tick()
        leader.tick()
        follower.tick()
        assert orjson.loads(record(any_redis)["tables"]) == {}
        assert follower.tables.caps() == leader.tables.caps() == {}
        assert gauge("db.items") == 0
    finally:
        leader.close()
        follower.close()
