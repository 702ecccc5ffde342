"""Flattened records that hide a table's deletes, through the real flow on tansu and Redis.

With the ``ExtractNewRecordState`` SMT in ``tombstone`` mode a delete reaches the worker
as a bare tombstone, and the deleted row's key stays cached. The first record without
``__deleted`` makes the table fall back to ttl mode before its batch is written: every
write is capped, so a lost delete's key expires within the fallback TTL. Once the
connector rewrites deletes again (and a window passed), the table returns and its
deletes apply.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from bytewax.testing import cluster_main
from prometheus_client import REGISTRY

from cdc_cache.mode.controller import Cause, Hold
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.tables import DELETES_HIDDEN, TableConfig, TableFallback
from cdc_cache.plan.rules_loader import parse_rules
from dataflows.config import FlowConfig, FlowContext
from dataflows.invalidation import build_flow
from tests.integration.cache import cache_state
from tests.integration.topics import produce, unique_topic
from tests.workload import TABLE, Message, Workload, flattened

pytestmark = pytest.mark.integration
FALLBACK_MS = 30_000
# Keyed by the primary key alone: a flattened update carries no before image.
RULES = parse_rules(
    """
defaults: {safety_ttl: 1h, tombstone_ttl: 30m}
tables:
  inventory.stock:
    keys:
      - key: "stock:{id}"
        fields: [id, sku_id, warehouse, qty]
"""
)


def expected(workload: Workload) -> dict[str, dict[str, Any]]:
    return {
        f"stock:{row_id}": {k: row[k] for k in ("id", "sku_id", "warehouse", "qty")}
        for row_id, row in workload.rows.items()
    }


def phase(broker: Any, redis_url: str, tables: TableFallback, messages: list[Message]) -> None:
    """Produce ``messages`` to a topic of their own and run the flow over it to its end."""
    topic = unique_topic()
    broker.create_topics({topic: 2})
    produce(broker.bootstrap, [Message(topic, m.key, m.value) for m in messages])
    config = FlowConfig(
        rules=RULES, brokers=(broker.bootstrap,), topics=(topic,), redis_url=redis_url, tail=False
    )
    cluster_main(build_flow(config, FlowContext(tables=tables)), [], 0)


def deleted_ids(messages: list[Message]) -> set[int]:
    return {
        orjson.loads(m.key or b"{}")["id"]
        for m in messages
        if m.value is not None and orjson.loads(m.value)["__op"] == "d"
    }


def hidden_gauge() -> float | None:
    return REGISTRY.get_sample_value("cdc_cache_deletes_hidden", {"table": TABLE})


def test_hidden_deletes_cap_the_table_and_it_returns_once_they_are_rewritten(
    broker, redis_server, redis_client
):
    clock = [1000.0]
    holds = Holds()
    tables = TableFallback([TABLE], holds, FALLBACK_MS, TableConfig(window_s=10), lambda: clock[0])
    workload = Workload(seed=3)
    envelopes = [m for tx in workload.transactions(300) for m in tx]
    phase(broker, redis_server.address(), tables, flattened(envelopes, rewrite=False))

    cached, live = cache_state(redis_client), expected(workload)
    stale = cached.keys() - live.keys()
    assert {k: cached[k] for k in live} == live, "the upserts applied"
    assert stale, "the deletes came as bare tombstones: their rows' keys stayed"
    ttls = {key: redis_client.pttl(key) for key in cached}
    assert all(0 < ttl <= FALLBACK_MS for ttl in ttls.values()), "every write capped"
    assert holds.active() == (Hold(Cause.TABLE_FAILING, DELETES_HIDDEN, TABLE),)
    assert hidden_gauge() == 1

    clock[0] += 11  # the connector was fixed: rewrite mode from here on
    envelopes = [m for tx in workload.transactions(200) for m in tx]
    messages = flattened(envelopes, rewrite=True)
    phase(broker, redis_server.address(), tables, messages)

    assert holds.active() == () and tables.caps() == {} and hidden_gauge() == 0
    cached, live = cache_state(redis_client), expected(workload)
    gone = deleted_ids(messages) - workload.rows.keys()
    assert gone and not any(f"stock:{row_id}" in cached for row_id in gone), "deletes apply"
    touched = {orjson.loads(m.key or b"{}")["id"] for m in messages} & workload.rows.keys()
    assert touched
    for row_id in touched:
        assert cached[f"stock:{row_id}"] == live[f"stock:{row_id}"]
        assert redis_client.pttl(f"stock:{row_id}") > FALLBACK_MS, "no longer capped"
