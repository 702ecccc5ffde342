"""Label values from messages are bounded: the rules' tables keep their names, later ones fold."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from cdc_cache.core import labels
from cdc_cache.core.errors import DecodeError
from cdc_cache.core.events import SourceRecord
from cdc_cache.dlq.entries import Failure
from cdc_cache.dlq.rejects import Rejects
from cdc_cache.plan.rules_loader import parse_rules
from tests.hostile import KeptDeadLetters


def overflowed(label: str) -> float:
    return REGISTRY.get_sample_value("cdc_cache_label_overflow_total", {"label": label}) or 0.0


def test_known_values_and_the_first_others_keep_their_names_later_ones_read_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bounded = labels.Bounded("test_a", 2)
    bounded.know(["shop.orders"])
    before = overflowed("test_a")
    with caplog.at_level(logging.WARNING, "cdc_cache.metrics"):
        shown = [bounded(v) for v in ["x.a", "x.b", "x.c", "x.a", "shop.orders", "x.d"]]
    assert shown == ["x.a", "x.b", labels.OTHER, "x.a", "shop.orders", labels.OTHER]
    assert overflowed("test_a") - before == 2
    (line,) = [r for r in caplog.records if "more than 2 test_a names" in r.getMessage()]
    assert line.value == "x.c"  # type: ignore[attr-defined]


def test_a_stream_of_made_up_tables_grows_the_poison_series_no_further_than_the_bound() -> None:
    """Each failure's table (from its message) made a series of its own, without end."""
    rules = parse_rules("tables:\n  app.users:\n    keys: [{key: 'user:{id}'}]\n")
    reject = Rejects(rules, KeptDeadLetters())
    for n in range(300):
        record = SourceRecord(f"forged.t{n}", 0, n, None, b"{")
        reject.report([Failure(DecodeError("bad").at(record), f"forged.t{n}")])
    tables = {
        sample.labels["table"]
        for metric in REGISTRY.collect()
        if metric.name == "cdc_cache_poison_messages"
        for sample in metric.samples
        if sample.labels.get("table", "").startswith("forged.")
    }
    assert len(tables) == 100  # this test's own bound (tests/conftest.py)
    assert REGISTRY.get_sample_value(
        "cdc_cache_poison_messages_total", {"kind": "undecodable", "table": labels.OTHER}
    )
