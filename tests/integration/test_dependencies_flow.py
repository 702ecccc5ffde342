"""Invalidation across tables through the worker's flow: real tansu, real Redis.

Each table is its own topic; the flow reads them all, with the skew Bytewax gives, then
reads them again from the start (every change a duplicate) after the application filled
pages and listings, so the tag and link ops run through the sink as in production.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from bytewax.testing import cluster_main

from cdc_cache.aside.cache_aside import CacheAside
from cdc_cache.core.keys import ns
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.tags import Fanout
from dataflows.config import FlowConfig
from dataflows.invalidation import build_flow
from tests.integration.topics import produce
from tests.unit.test_dependencies import CATALOG
from tests.workload import Message

pytestmark = pytest.mark.integration

RULES = parse_rules(CATALOG)
TABLES = ("brands", "products", "product_tags", "tags")


class Source:
    """Debezium envelopes of the catalog's changes, one topic per table, in commit order."""

    def __init__(self) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.pos = 4
        self.messages: list[Message] = []

    def topic(self, table: str) -> str:
        return f"{self.prefix}.catalog.{table}"

    def change(self, table: str, before: Any, after: Any) -> None:
        self.pos += 100
        op = "c" if before is None else "d" if after is None else "u"
        row = after or before
        key = {k: row[k] for k in (("id",) if "id" in row else ("product_id", "tag_id"))}
        value = {
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": 1_700_000_000_000,
            "source": {
                "connector": "mysql", "name": "dbserver1", "ts_ms": 1_700_000_000_000,
                "snapshot": "false", "db": "catalog", "table": table, "server_id": 1,
                "file": "mysql-bin.000001", "pos": self.pos, "row": 0,
            },
        }  # fmt: skip
        self.messages.append(Message(self.topic(table), orjson.dumps(key), orjson.dumps(value)))


def run_flow(broker: Any, url: str, source: Source) -> None:
    produce(broker.bootstrap, source.messages)
    source.messages = []
    config = FlowConfig(
        rules=RULES,
        brokers=(broker.bootstrap,),
        topics=tuple(source.topic(t) for t in TABLES),
        redis_url=url,
        tail=False,
        batch_size=2,
        fanout=Fanout(page=2),
    )
    cluster_main(build_flow(config), [], 0, worker_count_per_proc=1)


def test_a_brand_change_reaches_its_products_pages_through_the_worker(broker, redis_target):
    source = Source()
    broker.create_topics({source.topic(t): 2 for t in TABLES})
    source.change("brands", None, {"id": 7, "name": "Acme"})
    source.change("brands", None, {"id": 8, "name": "Bolt"})
    for pid, bid in ((1, 7), (2, 7), (3, 8), (4, None)):
        source.change("products", None, {"id": pid, "brand_id": bid, "name": f"p{pid}"})
    source.change("tags", None, {"id": 5, "name": "new"})
    source.change("product_tags", None, {"product_id": 3, "tag_id": 5})
    run_flow(broker, redis_target.url, source)

    client = redis_target.client
    cache = CacheAside(client, ttl_ms=600_000)
    pages = [f"product:{pid}:page" for pid in (1, 2, 3, 4)]
    for page in pages:
        cache.get(page, lambda: b"page")
    cache.get("listing:brand:8", lambda: b"p3", tags=["listing:brand:8"])
    assert all(client.exists(page) for page in [*pages, "listing:brand:8"])

    source.change("brands", {"id": 7, "name": "Acme"}, {"id": 7, "name": "Acme Corp"})
    source.change("tags", {"id": 5, "name": "new"}, {"id": 5, "name": "newest"})
    before = {"id": 4, "brand_id": None, "name": "p4"}
    source.change("products", before, {**before, "brand_id": 8})  # into brand 8's listing
    run_flow(broker, redis_target.url, source)  # every earlier change again, then these

    assert [client.exists(page) for page in pages] == [0, 0, 0, 0]
    assert client.exists("listing:brand:8") == 0
    members = client.hkeys(ns().tag_key("catalog.brands:8"))
    assert sorted(members) == [
        b"",  # the version, and its horizon
        b"h",
        b"product:3:page\ncatalog.products:3",
        b"product:4:page\ncatalog.products:4",
    ]
