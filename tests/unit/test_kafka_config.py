"""Kafka settings apart per client: common, consumers', producer's; each gets only its own."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import confluent_kafka
import pytest

from cdc_cache.app.load import load, load_settings
from cdc_cache.app.settings import SharedSettings
from cdc_cache.core.errors import ConfigError
from cdc_cache.source.kafka_config import CONSUMER_ONLY, PRODUCER_ONLY, misplaced


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CDC_CACHE_"):
            monkeypatch.delenv(name)


def test_each_client_gets_the_common_settings_and_only_its_own(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(
        "rules: r.yaml\ntopics: [inventory.cdc]\n"
        "kafka: {client.id: cdc-cache, security.protocol: SSL}\n"
        "kafka_consumer: {fetch.wait.max.ms: 50, check.crcs: true}\n"
        "kafka_producer: {compression.type: zstd, client.id: cdc-cache-dlq}\n"
    )
    settings = load_settings(config)
    assert settings.consumer_kafka() == {
        "client.id": "cdc-cache",
        "security.protocol": "SSL",
        "fetch.wait.max.ms": "50",  # YAML numbers and booleans become librdkafka strings
        "check.crcs": "true",
    }
    assert settings.producer_kafka() == {
        "client.id": "cdc-cache-dlq",  # a client's own setting wins over the common one
        "security.protocol": "SSL",
        "compression.type": "zstd",
    }
    assert settings.kafka == {"client.id": "cdc-cache", "security.protocol": "SSL"}


@pytest.mark.parametrize(
    ("section", "properties", "complaint"),
    [
        ("kafka", {"fetch.wait.max.ms": "100"}, "fetch.wait.max.ms is a consumer property"),
        ("kafka", {"linger.ms": "5"}, "linger.ms is a producer property"),
        ("kafka_consumer", {"acks": "all"}, "acks is a producer property.*kafka_producer"),
        ("kafka_producer", {"group.id": "g"}, "group.id is a consumer property.*kafka_consumer"),
    ],
)
def test_a_property_some_client_would_ignore_is_refused_naming_it_and_its_place(
    tmp_path: Path, section: str, properties: dict[str, str], complaint: str
) -> None:
    config = tmp_path / "worker.yaml"
    body = ", ".join(f"{k}: {v}" for k, v in properties.items())
    config.write_text(f"rules: r.yaml\ntopics: [a]\n{section}: {{{body}}}\n")
    with pytest.raises(ConfigError, match=rf"worker\.yaml:3: {section}: .*{complaint}"):
        load_settings(config)


@pytest.mark.parametrize(
    "properties",
    [{"acks": "1"}, {"request.required.acks": "0"}],
)
def test_producer_settings_that_could_lose_a_dead_letter_are_refused(properties) -> None:
    with pytest.raises(ConfigError, match=r"kafka_producer: .*would let a dead letter be lost"):
        load_settings(rules=Path("r.yaml"), topics=("a",), kafka_producer=properties)
    assert load_settings(
        rules=Path("r.yaml"), topics=("a",), kafka_producer={"acks": "all"}
    ).producer_kafka() == {"acks": "all"}


def test_dead_letters_without_idempotence_are_accepted() -> None:
    """Without it a retried entry may land twice under its id; none is lost."""
    settings = load_settings(
        rules=Path("r.yaml"), topics=("a",), kafka_producer={"enable.idempotence": False}
    )
    assert settings.producer_kafka() == {"enable.idempotence": "false"}


def test_settings_from_the_environment_name_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("CDC_CACHE_KAFKA", '{"queued.max.messages.kbytes": "1024"}')
    with pytest.raises(ConfigError, match=r"CDC_CACHE_KAFKA: kafka: .*put it under kafka_consumer"):
        load_settings(rules=Path("r.yaml"), topics=("a",))
    monkeypatch.setenv("CDC_CACHE_KAFKA", "{}")
    monkeypatch.setenv("CDC_CACHE_KAFKA_CONSUMER", '{"queued.max.messages.kbytes": "1024"}')
    settings = load_settings(rules=Path("r.yaml"), topics=("a",))
    assert settings.consumer_kafka() == {"queued.max.messages.kbytes": "1024"}


def test_a_value_librdkafka_cannot_take_names_its_key(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("rules: r.yaml\ntopics: [a]\nkafka_consumer: {fetch.wait.max.ms: [1]}\n")
    with pytest.raises(ConfigError, match=r"worker\.yaml:3: kafka_consumer\.fetch\.wait\.max\.ms"):
        load_settings(config)


def test_the_dlq_commands_read_the_same_sections(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("rules: r.yaml\ntopics: [a]\nkafka_consumer: {fetch.wait.max.ms: 10}\n")
    shared = load(SharedSettings, config)
    assert shared.consumer_kafka() == {"fetch.wait.max.ms": "10"}


def test_common_properties_fit_every_section() -> None:
    common = {"client.id": "x", "security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN"}
    assert misplaced(common, ()) == []
    assert misplaced({"fetch.wait.max.ms": "1"}, ("consumer",)) == []
    assert misplaced({"acks": "all"}, ("producer",)) == []


def test_the_role_table_is_the_bundled_librdkafkas(tmp_path: Path) -> None:
    """An upgrade of confluent-kafka that adds or moves a property fails here first."""
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    rdkafka = ctypes.CDLL(str(next(libs.glob("librdkafka*.so*"))))
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    rdkafka.rd_kafka_conf_properties_show.argtypes = [ctypes.c_void_p]
    out = tmp_path / "properties.md"
    handle = libc.fopen(str(out).encode(), b"w")
    rdkafka.rd_kafka_conf_properties_show(handle)
    libc.fclose(handle)
    roles: dict[str, set[str]] = {"C": set(), "P": set()}
    for line in out.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 3 and cells[1] in roles and "see dedicated API" not in line:
            roles[cells[1]].add(cells[0])  # callbacks cannot come from a settings file
    assert roles["C"] == CONSUMER_ONLY
    assert roles["P"] == PRODUCER_ONLY
