"""The connector files keep what the worker relies on (compose and k8s: their own tests)."""

import json
import re
from pathlib import Path

import pytest

from cdc_cache.app.load import load_settings
from cdc_cache.plan.rules_loader import load_rules
from cdc_cache.source.topics import named_for

ROOT = Path(__file__).parents[2]
CONNECTORS = sorted((ROOT / "connectors").glob("*.json"))


def test_example_rules_load():
    load_rules(ROOT / "cdc_cache" / "examples" / "inventory.rules.yaml")


def test_example_settings_load_with_each_client_s_own_kafka_settings():
    settings = load_settings(ROOT / "deploy" / "worker.example.yaml")
    assert "fetch.wait.max.ms" in settings.consumer_kafka()
    assert "fetch.wait.max.ms" not in settings.producer_kafka()


@pytest.mark.parametrize("path", CONNECTORS, ids=lambda p: p.name)
def test_connector_keeps_what_the_worker_relies_on(path):
    config = json.loads(path.read_text())
    assert config["tombstones.on.delete"] == "true"
    assert config["skipped.operations"] == "none", "TRUNCATE must reach the worker"
    assert config["decimal.handling.mode"] == "string"
    assert int(config["heartbeat.interval.ms"]) > 0
    assert config["topic.prefix"]
    # cdc-cache snapshot signals the connector through this table, in a captured database
    signal = config["signal.data.collection"]
    assert signal == "inventory.debezium_signal"
    if "table.include.list" in config:  # PostgreSQL's filtered publication holds only those
        assert signal in config["table.include.list"].split(",")
    else:
        assert signal.split(".")[0] in config["database.include.list"].split(",")


def test_the_compose_database_has_the_signal_table_the_connector_may_write():
    sql = (ROOT / "deploy" / "mysql" / "inventory.sql").read_text()
    assert "CREATE TABLE IF NOT EXISTS debezium_signal (" in sql
    assert "GRANT INSERT ON inventory.debezium_signal TO 'cdc'@'%';" in sql


def test_avro_connector_differs_from_the_json_one_only_in_format_and_identity():
    plain = json.loads((ROOT / "connectors" / "inventory-mysql.json").read_text())
    avro = json.loads((ROOT / "connectors" / "inventory-mysql-avro.json").read_text())
    converters = ("key.converter", "value.converter")
    identity = {"database.server.id", "topic.prefix", "schema.history.internal.kafka.topic"}
    same = {k: v for k, v in plain.items() if not k.startswith(converters) and k not in identity}
    assert {k: v for k, v in avro.items() if k in same} == same
    assert set(avro) - set(same) - identity == {k for k in avro if k.startswith(converters)}
    for key in identity:
        assert avro[key] != plain[key], f"{key}: two connectors must not share it"
    for side in converters:
        assert avro[side] == "io.apicurio.registry.utils.converter.AvroConverter"
        # Confluent framing (magic byte + 4-byte id in the payload) is what the worker decodes.
        assert avro[f"{side}.apicurio.registry.as-confluent"] == "true"
        assert avro[f"{side}.apicurio.registry.headers.enabled"] == "false"
        assert avro[f"{side}.apicurio.registry.use-id"] == "contentId"


def test_routed_connector_differs_from_the_json_one_only_in_routing_and_identity():
    plain = json.loads((ROOT / "connectors" / "inventory-mysql.json").read_text())
    routed = json.loads((ROOT / "connectors" / "inventory-mysql-routed.json").read_text())
    identity = {"database.server.id", "topic.prefix", "schema.history.internal.kafka.topic"}
    same = {k: v for k, v in plain.items() if k not in identity}
    assert {k: v for k, v in routed.items() if k in same} == same
    assert set(routed) - set(same) - identity == {k for k in routed if k.startswith("transform")}
    for key in identity:
        assert routed[key] != plain[key], f"{key}: two connectors must not share it"

    prefix = routed["topic.prefix"]
    assert routed["transforms"] == "route"
    assert routed["transforms.route.type"] == "io.debezium.transforms.ByLogicalTableRouter"
    # The key field that names each record's table stays (its default name, kept).
    assert routed["transforms.route.key.enforce.uniqueness"] == "true"
    assert "transforms.route.key.field.name" not in routed
    # Every table's topic is routed; heartbeats and schema changes keep their own.
    regex = re.compile(routed["transforms.route.topic.regex"])
    assert regex.fullmatch(f"{prefix}.inventory.stock")
    assert regex.fullmatch(f"{prefix}.inventory.products")
    assert not regex.fullmatch(f"__debezium-heartbeat.{prefix}")
    assert not regex.fullmatch(prefix)
    # The shared topic keeps the <prefix>.inventory.* shape the compose worker reads, so its
    # heartbeat topic is found by name (compose: TOPIC_PREFIX in deploy/compose/routed.env).
    shared = routed["transforms.route.topic.replacement"]
    assert re.fullmatch(rf"{re.escape(prefix)}\.inventory\..*", shared)
    assert named_for(prefix, shared)
    env = (ROOT / "deploy" / "compose" / "routed.env").read_text()
    assert f"TOPIC_PREFIX={prefix}\n" in env and "CONNECTOR=inventory-mysql-routed\n" in env


def test_the_readme_s_routed_deployment_is_valid_settings(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Routed topics") :]
    block = section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n", 1)]
    (tmp_path / "worker.yaml").write_text(block)
    settings = load_settings(tmp_path / "worker.yaml")
    assert settings.topics == ["inventory.cdc"]
    assert settings.heartbeat_topics == ["__debezium-heartbeat.dbserver1-routed"]
    assert settings.consumer_kafka()["fetch.wait.max.ms"] == "100"
    assert "fetch.wait.max.ms" not in settings.producer_kafka()
