"""Broker reachability from librdkafka's error callback: counted, gauged, logged sparingly."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from cdc_cache.source.broker_health import BrokerHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def errors(code: str) -> float:
    value = REGISTRY.get_sample_value("cdc_cache_consumer_errors_total", {"code": code})
    return value or 0.0


def broker_up() -> float | None:
    return REGISTRY.get_sample_value("cdc_cache_broker_up")


def warnings(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def test_an_outage_is_counted_gauged_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    health = BrokerHealth(log_every_s=30, clock=clock)
    health.reachable()
    assert broker_up() == 1
    before = errors("_ALL_BROKERS_DOWN")
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    with caplog.at_level(logging.WARNING, "cdc_cache.broker"):
        for _ in range(5):  # librdkafka repeats it on every reconnect attempt
            health.on_error(down)
            clock.now += 1
        assert errors("_ALL_BROKERS_DOWN") == before + 5
        assert broker_up() == 0 and health.up is False
        assert len(warnings(caplog, "kafka client error")) == 1
        clock.now += 30
        health.on_error(down)
        logged = warnings(caplog, "kafka client error")
        assert len(logged) == 2 and logged[1].__dict__["repeated"] == 4
        clock.now += 6
        health.reachable()
        assert broker_up() == 1 and health.up is True
        (back,) = warnings(caplog, "brokers reachable again")
        assert back.__dict__["down_s"] == 41.0
        health.on_error(down)  # a new outage is logged at once
        assert len(warnings(caplog, "kafka client error")) == 3


def test_other_errors_are_counted_but_leave_the_brokers_up() -> None:
    health = BrokerHealth()
    health.reachable()
    before = errors("_MSG_TIMED_OUT")
    health.on_error(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert errors("_MSG_TIMED_OUT") == before + 1
    assert health.up is True and broker_up() == 1


def test_transport_errors_mark_the_brokers_down() -> None:
    health = BrokerHealth()
    health.reachable()
    health.on_error(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
    assert health.up is False and broker_up() == 0


def test_probes_only_while_in_doubt_and_not_too_often() -> None:
    clock = Clock()
    health = BrokerHealth(probe_every_s=2, clock=clock)
    assert health.up is None
    assert health.should_probe()
    assert not health.should_probe()
    clock.now += 2
    assert health.should_probe()
    health.reachable()
    clock.now += 10
    assert not health.should_probe()
    health.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert health.should_probe()
