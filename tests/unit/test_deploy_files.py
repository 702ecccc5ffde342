"""The connector files keep what the worker relies on (compose and k8s: their own tests)."""

import json
from pathlib import Path

import pytest

from cdc_cache.rules import load_rules

ROOT = Path(__file__).parents[2]
CONNECTORS = sorted((ROOT / "connectors").glob("*.json"))


def test_example_rules_load():
    load_rules(ROOT / "cdc_cache" / "examples" / "inventory.rules.yaml")


@pytest.mark.parametrize("path", CONNECTORS, ids=lambda p: p.name)
def test_connector_keeps_what_the_worker_relies_on(path):
    config = json.loads(path.read_text())
    assert config["tombstones.on.delete"] == "true"
    assert config["skipped.operations"] == "none", "TRUNCATE must reach the worker"
    assert config["decimal.handling.mode"] == "string"
    assert int(config["heartbeat.interval.ms"]) > 0
    assert config["topic.prefix"]


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
