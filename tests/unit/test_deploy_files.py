"""The deployment files refer only to things that exist and settings the worker relies on."""

import json
from pathlib import Path

import pytest
import yaml

from cdc_cache.rules import load_rules
from cdc_cache.settings import ENV_PREFIX, WorkerSettings

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CONNECTORS = sorted((ROOT / "connectors").glob("*.json"))


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_compose_images_are_pinned_and_mounts_exist(name):
    service = COMPOSE["services"][name]
    if "image" in service:
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
    else:
        assert (ROOT / service["build"] / "Dockerfile").is_file()
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_compose_worker_environment_names_real_settings():
    environment = COMPOSE["services"]["worker"]["environment"]
    for variable in environment:
        assert variable.startswith(ENV_PREFIX)
        assert variable.removeprefix(ENV_PREFIX).lower() in WorkerSettings.model_fields, variable


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
