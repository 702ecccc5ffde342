"""Topic names: tables and connectors they say, with dotted prefixes and routed names."""

from __future__ import annotations

import pytest

from cdc_cache.app.worker import heartbeat_topics
from cdc_cache.source.topics import (
    heartbeat_server,
    named_for,
    routed_identity,
    table_of_topic,
    without_router_fields,
)


@pytest.mark.parametrize(
    ("topic", "table"),
    [
        ("dbserver1.inventory.stock", "inventory.stock"),
        ("prod.eu.dbserver1.inventory.stock", "inventory.stock"),
        ("inventory.cdc", None),  # a shared topic: two parts
        ("inventory_stock", None),  # a RegexRouter rename
        ("a..b", None),
        ("", None),
    ],
)
def test_the_table_a_topic_name_says(topic: str, table: str | None) -> None:
    assert table_of_topic(topic) == table


def test_heartbeat_topics_name_dotted_servers() -> None:
    assert heartbeat_server("__debezium-heartbeat.prod.eu.dbserver1") == "prod.eu.dbserver1"
    assert heartbeat_server("__debezium-heartbeat.") is None
    assert heartbeat_server("heartbeats.prod.eu.dbserver1") is None


def test_a_dotted_prefix_names_only_its_own_topics() -> None:
    topic = "prod.eu.dbserver1.inventory.stock"
    assert named_for("prod.eu.dbserver1", topic)
    # A connector named like the start of another's prefix is not the one feeding it.
    assert not named_for("prod.eu", topic)
    assert not named_for("prod", topic)
    assert named_for("prod.eu", "prod.eu.inventory.stock")
    assert named_for("prod.eu.dbserver1", "__debezium-heartbeat.prod.eu.dbserver1")
    assert not named_for("prod.eu", "__debezium-heartbeat.prod.eu.dbserver1")
    assert not named_for("prod.eu.dbserver1", "inventory.cdc")
    assert not named_for("prod.eu.dbserver1", "prod.eu.dbserver1")  # its schema-change topic


def test_the_router_key_field_is_read_and_removed() -> None:
    key = {"id": 1, "__dbz__physicalTableIdentifier": "db1.inv.stock"}
    assert routed_identity(key) == "db1.inv.stock"
    assert routed_identity({"id": 1, "__dbz__sourceIdentifier": "db1.inv.a"}) == "db1.inv.a"
    assert routed_identity({"id": 1}) is None
    assert without_router_fields(key) == {"id": 1}
    plain = {"id": 1}
    assert without_router_fields(plain) is plain


def test_heartbeat_topics_are_found_for_dotted_prefixes_without_mixing_connectors() -> None:
    existing = {
        "__debezium-heartbeat.prod.eu.dbserver1",
        "__debezium-heartbeat.prod.eu",
        "__debezium-heartbeat.other",
        "prod.eu.dbserver1.inventory.stock",
    }
    assert heartbeat_topics(existing, ["prod.eu.dbserver1.inventory.stock"]) == [
        "__debezium-heartbeat.prod.eu.dbserver1"
    ]
    # A routed or renamed topic names no connector: its heartbeat topic must be configured.
    assert heartbeat_topics(existing, ["inventory.cdc", "inventory_stock"]) == []


def test_the_local_runner_routes_every_table_topic_and_nothing_else(tmp_path) -> None:
    import re

    from cdc_cache.tools.devstack.debezium import ConnectorSettings

    settings = ConnectorSettings(
        source="mariadb", host="h", port=1, user="u", password="p",
        topic_prefix="prod.eu-1.db", state_dir=tmp_path, route_to="inventory.cdc",
    )  # fmt: skip
    props = settings.properties()
    assert props["transforms.route.type"] == "io.debezium.transforms.ByLogicalTableRouter"
    assert props["transforms.route.topic.replacement"] == "inventory.cdc"
    regex = re.compile(props["transforms.route.topic.regex"])  # Java's syntax here alike
    assert regex.fullmatch("prod.eu-1.db.inventory.stock")
    assert not regex.fullmatch("prodXeu-1.db.inventory.stock")  # dots are literal
    assert not regex.fullmatch("__debezium-heartbeat.prod.eu-1.db")
    assert not regex.fullmatch("prod.eu-1.db")
    assert "transforms" not in ConnectorSettings(**{**settings.__dict__, "route_to": None}).properties()
