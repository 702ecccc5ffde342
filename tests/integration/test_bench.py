"""The throughput benchmark runs end to end on a tiny load and reports every measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

ROOT = Path(__file__).resolve().parents[2]
PHASES = (
    "load", "consume_only", "redis_lua", "product_1proc", "product_2proc",
    "product_1proc_2threads", "baseline", "latency_full", "latency_half",
    "product_1proc_wait", "latency_half_wait",
)  # fmt: skip


@pytest.mark.integration
def test_benchmark_reports_every_phase_and_passes_its_correctness_guard(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "bench/throughput.py", "--events", "3000", "--latency-seconds", "2",
         "--baseline-seconds", "2", "--replicas", "1", "--rounds", "1", "--out", str(out)],
        cwd=ROOT, timeout=240, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert set(PHASES) <= result.keys()
    assert result["load"]["events"] == 3000
    for phase in ("product_1proc", "product_1proc_wait", "product_2proc", "product_1proc_2threads"):
        run = result[phase]
        assert run["records"] == result["load"]["records"]
        assert run["guard"]["ok"] and run["guard"]["keys_checked"] > 100, run["guard"]
        assert run["events_per_s"] > 0
        assert all(w["writes"] > 0 and w["changes_per_write"] > 0 for w in run["writes"])
        assert all(runs.keys() == {"0", "1", "2"} for runs in run["gc_collections"])
    assert result["product_1proc_wait"]["redis_replicas"] == 1
    for phase in ("latency_full", "latency_half", "latency_half_wait"):
        lat = result[phase]
        assert lat["probes"] > 50
        assert 0 < lat["p50_ms"] <= lat["p99_ms"]
        assert 0 < lat["send_to_ack"]["p50_ms"] < lat["send_to_applied"]["p50_ms"]
        assert len(lat["probe_ms"]["ack_to_delivered"]) == lat["probes"]
        assert 0 < lat["split"]["ack_to_delivered"]["p50_ms"] < lat["p99_ms"]
        assert "probe_consumer_cores" in lat["cpu"]
        own = lat["worker_own_time"]  # from the worker's own histogram
        assert own["changes"] > lat["probes"] and 0 < own["p50_ms"] <= own["p99_ms"]
    assert result["consume_only"]["records"] == result["load"]["records"]
    assert set(result["ratios"]) == {
        "vs_baseline", "vs_lower_raw_limit", "scaling_2_vs_1",
        "wait_vs_no_wait", "wait_cpu_vs_no_wait",
    }  # fmt: skip
    assert len(result["wait_rounds"]) == 1
    assert result["replica_wait"]["waits"] == 2000
    assert 0 < result["replica_wait"]["p50_ms"] <= result["replica_wait"]["p99_ms"]
    assert result["conditions_start"]["nproc"] and result["conditions_end"]["loadavg"]
    table = out.with_suffix(".md").read_text()
    assert "cdc-cache run, 1 process" in table and "p99" in table
    assert "waiting for 1 replica(s)" in table
    assert "worker: delivered → applied" in table
    assert "the worker's own time, received → applied" in table
    charts = subprocess.run(
        [sys.executable, "bench/charts.py", "--throughput", str(out), "--out-dir", str(tmp_path)],
        cwd=ROOT, timeout=60, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert charts.returncode == 0, charts.stderr[-3000:]
    for name in ("throughput", "latency"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    scaling = subprocess.run(
        [sys.executable, "bench/scaling.py", "--throughput", str(out),
         "--out", str(tmp_path / "scaling.md")],
        cwd=ROOT, timeout=60, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert scaling.returncode == 0, scaling.stderr[-3000:]
    assert "| 1,000,000 |" in (tmp_path / "scaling.md").read_text()


@pytest.mark.integration
def test_correctness_guard_fails_on_a_lost_write_or_a_lost_delete(
    tmp_path: Path, redis_client: Any
) -> None:
    from bench.throughput import Bench
    from bench.workload import Generator

    generator = Generator(prefix="guard", seed=3)
    for _ in generator.messages(2000):
        pass
    present, absent = generator.expected()
    assert absent, "the workload deleted no row"
    for key, value in present.items():
        if isinstance(value, dict):
            redis_client.hset(key, mapping=value)
        else:
            redis_client.set(key, value)
    bench = Bench(tmp_path)
    bench.redis = redis_client
    assert bench.guard(generator)["ok"]

    stale = next(k for k, v in present.items() if not isinstance(v, dict))
    redis_client.set(stale, b'{"old": true}')
    assert bench.guard(generator)["wrong_values"] == 1
    redis_client.set(stale, present[stale])
    redis_client.set(absent[0], b"resurrected")
    report = bench.guard(generator)
    assert not report["ok"] and report["deleted_but_present"] == 1


@pytest.mark.integration
def test_memory_benchmark_reports_both_layouts_on_both_deployments(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, "bench/memory.py", "--keys", "2000", "--value-sizes", "100",
         "--apply-rounds", "1", "--out", str(out)],
        cwd=ROOT, timeout=170, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text())
    cells = {(r["deployment"], r["layout"]) for r in result["runs"]}
    assert cells == {(d, layout) for d in ("one server", "Cluster, 3 primaries")
                     for layout in ("before", "after")}  # fmt: skip
    for run in result["runs"]:
        assert run["values_per_key"] > 100 and run["metadata_per_tombstone"] > 0
    assert set(result["script_cost"]) >= {"before", "after"}
    assert "→" in out.with_suffix(".md").read_text()
    svg = ElementTree.fromstring(out.with_suffix(".svg").read_text())
    assert len(svg.findall("{http://www.w3.org/2000/svg}rect")) == 4 * 2 + 4  # bars, legend


@pytest.mark.integration
def test_apply_args_benchmark_measures_both_sides_and_the_accounting(tmp_path: Path) -> None:
    out = tmp_path / "args.json"
    done = subprocess.run(
        [sys.executable, "bench/apply_args.py", "--events", "2000", "--rounds", "1",
         "--out", str(out)],
        cwd=ROOT, timeout=120, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["ops"] > result["events"] // 2 and result["calls"] >= 1
    for side in ("worker_us_per_op", "redis_us_per_op", "account_us_per_change"):
        assert result[side] > 0, side


@pytest.mark.integration
def test_fanout_benchmark_deletes_every_dependent_key_on_both_deployments(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    done = subprocess.run(
        [sys.executable, "bench/fanout.py", "--sizes", "300", "--page", "100", "--out", str(out)],
        cwd=ROOT, timeout=170, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    runs = json.loads(out.read_text())["runs"]
    assert [r["deployment"] for r in runs] == ["one server", "Cluster, 3 primaries"]
    assert all(r["keys_per_s"] > 0 and r["other_p99_ms"] > 0 for r in runs)


@pytest.mark.integration
def test_handover_benchmark_times_writes_at_both_intervals_alone_and_beside_a_busy_thread(
    tmp_path: Path,
) -> None:
    out = tmp_path / "handover.json"
    done = subprocess.run(
        [sys.executable, "bench/handover.py", "--rounds", "1", "--seconds", "0.3",
         "--out", str(out)],
        cwd=ROOT, timeout=120, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    medians = json.loads(out.read_text())["medians"]
    assert set(medians) == {"5 ms, alone", "1 ms, alone", "5 ms, beside", "1 ms, beside"}
    for name, seen in medians.items():
        assert seen["writes"] >= 1 and seen["write_p50_ms"] > 0, name
        assert (seen["routed_per_s"] > 0) == name.endswith("beside"), name
