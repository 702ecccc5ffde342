"""The charts' data, and that each chart is drawn from its results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.charts import FLOOR_MS, cdf, draw, latency_curves, soak_series, throughput_bars
from bench.probes import split
from tests.unit.bench_result import throughput_result

PNG = b"\x89PNG\r\n\x1a\n"
PERCENTILES = {"p50_ms": 50.0, "p95_ms": 90.0, "p99_ms": 120.0, "max_ms": 150.0}


def _phase(total: list[float], broker: list[float]) -> dict[str, object]:
    samples = {"ack_to_applied": total, "ack_to_delivered": broker}
    return {**PERCENTILES, "achieved_rate": 10_000, "probe_ms": samples, "split": split(samples)}


def test_record_rates_are_drawn_as_event_rates() -> None:
    bars = {bar.label: bar for bar in throughput_bars(throughput_result())}
    assert bars["plain consumer loop (baseline)"].events_per_s == pytest.approx(10_000)
    assert bars["Kafka: consume only"].events_per_s == pytest.approx(200_000)
    assert bars["worker, 2 processes"].events_per_s == 30_000
    assert [b.kind for b in bars.values()].count("limit") == 2


def test_the_cdf_is_sorted_ends_at_one_and_lifts_nonpositive_values_to_the_floor() -> None:
    xs, ys = cdf([30.0, -2.0, 10.0, 0.0])
    assert xs == [FLOOR_MS, FLOOR_MS, 10.0, 30.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]


def test_latency_curves_split_when_samples_were_kept() -> None:
    curves = latency_curves(_phase([100.0, 40.0], [30.0, 50.0]))
    assert [c.label for c in curves] == [
        "ack → applied", "broker: ack → delivered", "worker: delivered → applied",
    ]  # fmt: skip
    assert curves[2].xs == [FLOOR_MS, 70.0]  # 40 - 50 < 0, 100 - 30
    assert curves[0].p99_ms == 120.0


def test_the_workers_own_time_is_drawn_through_its_histograms_percentiles() -> None:
    own = {"changes": 900, "p50_ms": 20.0, "p95_ms": 60.0, "p99_ms": 90.0}
    curves = latency_curves({**_phase([100.0, 40.0], [30.0, 50.0]), "worker_own_time": own})
    assert curves[3].label.startswith("worker's own time") and not curves[3].from_samples
    assert (curves[3].xs, curves[3].ys) == ([20.0, 60.0, 90.0], [0.5, 0.95, 0.99])
    assert curves[3].p99_ms == 90.0
    idle = {"changes": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}
    assert len(latency_curves({**_phase([1.0], [1.0]), "worker_own_time": idle})) == 3


def test_latency_curves_fall_back_to_percentiles_for_older_results() -> None:
    (curve,) = latency_curves({**PERCENTILES, "achieved_rate": 10_000})
    assert not curve.from_samples
    assert curve.xs == [50.0, 90.0, 120.0, 150.0] and curve.ys == [0.5, 0.95, 0.99, 1.0]


def test_soak_samples_become_minutes() -> None:
    assert soak_series({"rss_mb_samples": [[0.0, 70.0], [90.0, 80.0]]}) == (
        [0.0, 1.5],
        [70.0, 80.0],
    )


def test_each_chart_is_written_when_its_results_file_exists(tmp_path: Path) -> None:
    result = throughput_result(
        latency_full=_phase([300.0, 400.0, 350.0], [20.0, 60.0, 40.0]),
        latency_half=_phase([40.0, 90.0, 60.0], [30.0, 95.0, 10.0]),
    )
    (tmp_path / "throughput.json").write_text(json.dumps(result))
    soak = {"soak": {"rate": 3000, "seconds": 20, "rss_mb_max": 80.0,
                     "rss_mb_samples": [[0.0, 70.0], [10.0, 75.0], [20.0, 80.0]]}}  # fmt: skip
    (tmp_path / "soak.json").write_text(json.dumps(soak))
    written = draw(tmp_path / "throughput.json", tmp_path / "absent.json", tmp_path / "out")
    assert [p.name for p in written] == ["throughput.png", "latency.png"]
    written = draw(None, tmp_path / "soak.json", tmp_path / "out")
    assert [p.name for p in written] == ["soak.png"]
    for name in ("throughput", "latency", "soak"):
        assert (tmp_path / "out" / f"{name}.png").read_bytes().startswith(PNG)
