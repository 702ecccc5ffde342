"""Topics created after the worker started (a new table, its connector's heartbeat topic)
are read within ``topic_refresh_s``, from their first message, and recovery keeps working
across the restart of the flow that picks them up (SIGKILL after the addition)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cdc_cache.core.keys import ns
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.process import free_port
from tests.integration.cache import cache_state
from tests.integration.probes import admin_get, metric
from tests.integration.services import Cluster, Service, worker
from tests.integration.topics import produce, unique_topic
from tests.integration.waiting import wait_until
from tests.workload import RULES_YAML, Message, Workload

pytestmark = pytest.mark.integration

SHOP_RULES = RULES_YAML.replace("inventory.stock", "shop.stock").replace("stock:{", "shop:{")
BOTH_RULES = RULES_YAML + SHOP_RULES.split("tables:\n", 1)[1]


def shop_cache(workload: Workload) -> dict[str, object]:
    return {key.replace("stock:", "shop:", 1): v for key, v in workload.expected_cache().items()}


def messages(workload: Workload, count: int) -> list[Message]:
    return [m for tx in workload.transactions(count) for m in tx]


def both_current(client, stock: Workload, shop: Workload) -> bool:
    return cache_state(client, "shop:") == shop_cache(shop) and (
        cache_state(client) == stock.expected_cache()
    )


def first_table_cached(bootstrap: str, client, stock: Workload, alive: list[Service]) -> None:
    produce(bootstrap, messages(stock, 200))
    wait_until(
        "the first table cached",
        lambda: cache_state(client) == stock.expected_cache(),
        60,
        alive=alive,
    )


def test_a_new_table_and_heartbeat_topic_are_read_without_a_restart_and_survive_a_kill(
    broker: Broker, redis_server, redis_client, tmp_path: Path
) -> None:
    first = unique_topic("inventory.stock")
    server = first.split(".", 1)[0]
    added, beats = f"{server}.shop.stock", f"__debezium-heartbeat.{server}"
    broker.create_topics({first: 2})
    stock = Workload(seed=61, topic=first)
    shop = Workload(seed=62, topic=added, db="shop")
    port = free_port()
    service = worker(
        tmp_path, broker.bootstrap, redis_server.address(), [],
        rules=BOTH_RULES,
        env={"CDC_CACHE_TOPIC_PATTERN": rf"{server}\..*", "CDC_CACHE_TOPIC_REFRESH_S": "1"},
    )  # fmt: skip
    service.argv += ["--metrics-port", str(port)]
    service.start()
    try:
        first_table_cached(broker.bootstrap, redis_client, stock, [service])
        # a new table: its topic exists, with changes, before the worker looks again
        broker.create_topics({added: 2, beats: 1})
        produce(broker.bootstrap, messages(shop, 200))
        took = wait_until(
            "the new table cached",
            lambda: cache_state(redis_client, "shop:") == shop_cache(shop),
            30,
            alive=[service],
        )
        print(f"new topic read within {took:.1f}s")
        wait_until(
            "the new heartbeat topic read",
            lambda: f'topic="{beats}"' in admin_get(port, "/metrics")[1].decode(),
            10,
            alive=[service],
        )
        produce(broker.bootstrap, messages(stock, 100) + messages(shop, 100))
        wait_until(
            "both tables current",
            lambda: both_current(redis_client, stock, shop),
            30,
            alive=[service],
        )
        service.kill()
        produce(broker.bootstrap, messages(stock, 100) + messages(shop, 100))
        service.start()
        wait_until(
            "both tables current after SIGKILL",
            lambda: both_current(redis_client, stock, shop),
            60,
            alive=[service],
        )
        # resumed from the snapshot, the added topic too: not every message read again
        shop_events = metric(port, "cdc_cache_events_total", {"table": "shop.stock"})
        shop_total = len(messages(Workload(seed=62, topic=added, db="shop"), 400))
        assert 0 < shop_events < shop_total, shop_events
        assert service.terminate() == 0, service.tail()
    finally:
        service.stop()


def test_a_cluster_restarts_its_flow_together_onto_process_0s_list(
    broker: Broker, redis_server, redis_client, tmp_path: Path
) -> None:
    first = unique_topic("inventory.stock")
    server = first.split(".", 1)[0]
    added = f"{server}.shop.stock"
    broker.create_topics({first: 2})
    stock = Workload(seed=71, topic=first)
    shop = Workload(seed=72, topic=added, db="shop")
    env = {
        "CDC_CACHE_TOPIC_PATTERN": rf"{server}\..*",
        "CDC_CACHE_TOPIC_REFRESH_S": "1",
        "CDC_CACHE_RECOVERY_PARTITIONS": "2",
    }
    cluster = Cluster(
        tmp_path, broker.bootstrap, redis_server.address(), [], env,
        rules=BOTH_RULES,
    )  # fmt: skip
    cluster.start()
    alive = cluster.services
    try:
        first_table_cached(broker.bootstrap, redis_client, stock, alive)
        broker.create_topics({added: 4})
        produce(broker.bootstrap, messages(shop, 200) + messages(stock, 50))
        took = wait_until(
            "the new table cached", lambda: both_current(redis_client, stock, shop), 60, alive=alive
        )
        print(f"new topic read by the cluster within {took:.1f}s")
        assert sorted(orjson.loads(redis_client.get(ns().topics))) == sorted([first, added])
        wait_until(
            "each partition of the new topic read by one process",
            lambda: (
                sorted(cluster.partitions_of(0, added) + cluster.partitions_of(1, added))
                == [0, 1, 2, 3]
            ),
            10,
            alive=alive,
        )
    finally:
        cluster.stop()
