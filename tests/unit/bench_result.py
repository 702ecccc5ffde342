"""A throughput result shaped like bench/results/throughput.json, with round numbers."""

from __future__ import annotations

from typing import Any


def throughput_result(**overrides: Any) -> dict[str, Any]:
    """1 process: 20,000 events/s at 0.8 worker cores (40 µs/event), Redis 0.2 (10 µs)."""
    cpu = {"worker_cores": 0.8, "harness_cores": 0.0, "broker_cores": 0.11,
           "redis_cores": 0.2, "machine_busy_cores": 1.21}  # fmt: skip
    result: dict[str, Any] = {
        "conditions_start": {"nproc": 2, "loadavg": [0.1, 0.1, 0.1]},
        "load": {"events": 1_000_000, "records": 1_100_000},
        "consume_only": {"records_per_s": 220_000, "events_per_s": 200_000},
        "redis_lua": {"events_per_s": 120_000},
        "product_1proc": {"processes": 1, "events_per_s": 20_000, "records_per_s": 22_000,
                          "cpu": cpu},
        "product_2proc": {"processes": 2, "events_per_s": 30_000, "records_per_s": 33_000,
                          "cpu": {**cpu, "worker_cores": 1.5, "machine_busy_cores": 1.9}},
        "product_1proc_2threads": {"processes": 1, "events_per_s": 22_000},
        "baseline": {"records_per_s": 11_000},
        "measured_at": "2026-11-30T10:00:00+0000",
    }  # fmt: skip
    return result | overrides
