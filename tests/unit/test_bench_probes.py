"""Per-probe latencies: ack → applied split at the moment a plain consumer got the probe."""

from __future__ import annotations

import json

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    generate_latest,
)

from bench.probes import collections, compact, own_time, per_probe, split, worker_share, writes
from bench.throughput import dumps

SENT_US = {1: 1_000_000_000, 2: 1_000_010_000}  # 1000 s and 1000.01 s after the epoch


def test_each_probe_is_measured_from_its_broker_ack() -> None:
    samples = per_probe(
        SENT_US,
        ack_after_s={1: 0.005, 2: 0.002},
        delivered={1: 1000.030, 2: 1000.050},
        applied={1: 1000.100, 2: 1000.060},
    )
    assert samples["ack_to_applied"] == pytest.approx([95.0, 48.0])
    assert samples["ack_to_delivered"] == pytest.approx([25.0, 38.0])
    assert worker_share(samples) == pytest.approx([70.0, 10.0])


def test_the_split_counts_probes_the_worker_had_before_the_side_consumer() -> None:
    samples = {
        "ack_to_applied": [50.0, 60.0, 70.0, 80.0, 90.0],
        "ack_to_delivered": [60.0, 10.0, 20.0, 30.0, 40.0],
    }
    found = split(samples)
    assert found["worker_share_negative"] == 0.2
    assert found["ack_to_delivered"]["p50_ms"] == 30.0
    assert found["delivered_to_applied"]["max_ms"] == 50.0
    assert found["delivered_to_applied"]["p50_ms"] == 50.0


def test_samples_are_kept_to_a_tenth_of_a_millisecond_on_one_line_each() -> None:
    kept = compact({"ack_to_applied": [1.26, 100.04], "ack_to_delivered": [-0.46, 3.0]})
    assert kept == {"ack_to_applied": [1.3, 100.0], "ack_to_delivered": [-0.5, 3.0]}
    text = dumps({"phase": {"p50_ms": 1.0, "probe_ms": kept}, "pairs": [[0.0, 76.1]]})
    assert '"ack_to_applied": [1.3,100.0]' in text
    assert '"ack_to_delivered": [-0.5,3.0]' in text
    assert json.loads(text)["pairs"] == [[0.0, 76.1]]


def test_the_workers_own_time_is_read_from_its_histogram() -> None:
    registry = CollectorRegistry()
    stays = Histogram(
        "received_to_applied_seconds", "own time", namespace="cdc_cache",
        buckets=(0.01, 0.05, 0.1, 0.5), registry=registry,
    )  # fmt: skip
    for seconds in [0.03] * 98 + [0.3] * 2:
        stays.observe(seconds)
    shown = own_time(generate_latest(registry).decode())
    assert shown["changes"] == 100
    assert shown["p50_ms"] == pytest.approx(10 + 40 * 50 / 98, abs=0.1)  # within (10, 50] ms
    assert shown["p99_ms"] == pytest.approx(100 + 400 * 1 / 2, abs=0.1)  # within (100, 500] ms


def test_a_worker_that_took_no_change_has_no_own_time() -> None:
    assert own_time("") == {"changes": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}


def test_the_workers_writes_are_read_from_its_batch_histogram_and_change_count() -> None:
    registry = CollectorRegistry()
    writes_histogram = Histogram(
        "apply_batch_seconds", "one write", namespace="cdc_cache", registry=registry
    )
    records = Counter("records", "records", ["kind"], namespace="cdc_cache", registry=registry)
    for seconds in (0.02, 0.04):
        writes_histogram.observe(seconds)
    records.labels("change").inc(500)
    records.labels("tombstone").inc(70)
    shown = writes(generate_latest(registry).decode())
    assert shown == {"writes": 2, "changes_per_write": 250.0, "ms_per_write": 30.0}


def test_a_worker_that_wrote_nothing_has_no_changes_per_write() -> None:
    assert writes("") == {"writes": 0, "changes_per_write": None, "ms_per_write": None}


def test_the_collectors_runs_are_read_by_generation() -> None:
    registry = CollectorRegistry()
    GCCollector(registry=registry)
    shown = collections(generate_latest(registry).decode())
    assert shown.keys() == {"0", "1", "2"}
    assert all(count >= 0 for count in shown.values())
