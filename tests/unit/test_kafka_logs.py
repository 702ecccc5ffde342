"""librdkafka's lines through the JSON log: one per level and facility per interval."""

from __future__ import annotations

import logging

from cdc_cache.core.throttle import Throttle
from cdc_cache.source.kafka_logs import KafkaLogs, with_logger


def test_a_repeated_line_is_logged_once_per_interval_with_what_was_left_out(caplog):
    now = [0.0]
    logs = KafkaLogs(every_s=30, clock=lambda: now[0])
    fail = (logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect failed")
    with caplog.at_level(logging.DEBUG, logger="cdc_cache.kafka"):
        for _ in range(50):
            logs.log(*fail)
            now[0] += 0.2  # librdkafka repeats itself five times a second
        logs.log(logging.WARNING, "%s [%s] %s", "REQTMOUT", "rdkafka#producer-2", "Timed out")
        now[0] += 30
        logs.log(*fail)
    lines = [(r.levelno, r.getMessage(), r.facility, r.left_out) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [
        (logging.ERROR, "librdkafka: Connect failed", "FAIL", 0),
        (logging.WARNING, "librdkafka: Timed out", "REQTMOUT", 0),
        (logging.ERROR, "librdkafka: Connect failed", "FAIL", 49),
    ]
    assert caplog.records[0].client == "rdkafka#consumer-1"  # type: ignore[attr-defined]


def test_every_client_config_gets_the_logger_and_keeps_its_settings():
    config = with_logger({"bootstrap.servers": "b:9092", "acks": "all"})
    assert config["acks"] == "all" and isinstance(config["logger"], KafkaLogs)


def test_a_throttle_reset_admits_at_once():
    throttle = Throttle(10, clock=lambda: 0.0)
    assert throttle.admit("x") == 0
    assert throttle.admit("x") is None
    throttle.reset()
    assert throttle.admit("x") == 1
