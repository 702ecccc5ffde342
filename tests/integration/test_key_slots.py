"""Cache keys land in the slot Redis Cluster itself computes for them."""

from __future__ import annotations

from typing import Any

import pytest

from cdc_cache.core.keys import Names, escape_value, key_slot, ns

pytestmark = pytest.mark.integration

SAMPLE = [
    "",
    "plain",
    "{}",
    "{}{a}",
    "a{}b{c}",
    "{{a}}",
    "{a{b}c}",
    "foo{{bar}}zap",
    "}{x}",
    "stock:{7}:north",
    "é{ü}ñ",
    "日本語:{キー}",
    "x" * 5_000,
    "{" + "y" * 3_000 + "}",
]


def test_key_slot_agrees_with_redis_cluster_keyslot(redis_cluster_client: Any) -> None:
    node = redis_cluster_client.get_primaries()[0]
    server = redis_cluster_client.get_redis_connection(node)
    derived = [f(k) for k in SAMPLE for f in (ns().version_key, ns().lease_key, escape_value)]
    derived += [
        f(k) for k in SAMPLE for f in (Names("orders-eu").version_key, Names("orders-eu").lease_key)
    ]
    for key in [*SAMPLE, *derived]:
        assert server.execute_command("CLUSTER KEYSLOT", key) == key_slot(key), key
