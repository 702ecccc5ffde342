"""The scaling model: units per target from measured costs, and its check on 2 cores."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bench.scaling import (
    BEGIN,
    END,
    Assumptions,
    costs,
    markdown,
    predict_here,
    process_capacity,
    replace_block,
    shard_capacity,
    size,
)
from tests.unit.bench_result import throughput_result


def test_costs_are_cores_over_rate_from_the_one_process_run() -> None:
    c = costs(throughput_result())
    assert c.worker_us_per_event == pytest.approx(40.0)
    assert c.redis_us_per_event == pytest.approx(10.0)
    assert c.broker_us_per_record == pytest.approx(5.0)
    assert c.records_per_event == pytest.approx(1.1)
    assert c.kafka_limit == pytest.approx(200_000)
    assert c.other_cores == pytest.approx(0.1)


def test_a_process_is_bounded_by_its_measured_rate_unless_its_cores_bound_it_lower() -> None:
    c = costs(throughput_result())
    full = process_capacity(c, Assumptions(cores_per_process=1))
    assert full.events_per_s == 20_000 and "measured rate" in full.bound
    half = process_capacity(c, Assumptions(cores_per_process=0.5))
    assert half.events_per_s == pytest.approx(12_500) and "CPU" in half.bound


def test_a_redis_shard_is_one_core_or_the_script_limit_whichever_is_lower() -> None:
    c = costs(throughput_result())
    assert shard_capacity(c).events_per_s == pytest.approx(100_000)  # 1 s / 10 µs
    slow_script = costs(throughput_result(redis_lua={"events_per_s": 60_000}))
    assert shard_capacity(slow_script).events_per_s == 60_000


def test_sizing_for_100k_events_per_s_at_70_percent() -> None:
    s = size(100_000, costs(throughput_result()), Assumptions(threads_per_process=2))
    assert s.processes == math.ceil(100_000 / (20_000 * 0.7)) == 8
    assert s.partitions == 16
    assert s.shards == 2  # 100k / (100k x 0.7)
    assert s.broker_cores == pytest.approx(100_000 * 1.1 * 5e-6 / 0.7)
    assert s.first_limit == "worker process"
    assert s.loads["Redis shard"] == pytest.approx(1.0)


def test_redis_is_the_first_limit_when_a_shard_carries_less_than_a_process() -> None:
    cpu = {**throughput_result()["product_1proc"]["cpu"], "redis_cores": 1.25}
    result = throughput_result()
    result["product_1proc"] = {**result["product_1proc"], "cpu": cpu}  # 62.5 µs per event
    s = size(100_000, costs(result), Assumptions())
    assert s.first_limit == "Redis shard"
    assert s.shards == math.ceil(100_000 / (16_000 * 0.7)) == 9


@given(
    target=st.floats(1_000, 10_000_000),
    utilisation=st.floats(0.1, 1.0),
    cores=st.floats(0.25, 4.0),
)
@example(target=62_500, utilisation=1 / 3, cores=0.5)  # 15 processes computed as 15.000...02
def test_every_unit_stays_within_the_utilisation_it_is_sized_for(
    target: float, utilisation: float, cores: float
) -> None:
    c = costs(throughput_result())
    a = Assumptions(cores_per_process=cores, utilisation=utilisation)
    s = size(target, c, a)
    assert target / (s.processes * process_capacity(c, a).events_per_s) <= utilisation + 1e-9
    assert target / (s.shards * shard_capacity(c).events_per_s) <= utilisation + 1e-9
    assert (
        s.processes == 1
        or target / ((s.processes - 1) * process_capacity(c, a).events_per_s) > utilisation
    )


def test_two_processes_here_are_bounded_by_the_free_cores_and_the_error_is_reported() -> None:
    c = costs(throughput_result())
    p = predict_here(c, 2, measured=30_000)
    per_event_us = 40 + 10 + 5 * 1.1
    assert p.events_per_s == pytest.approx(1.9 * 1e6 / per_event_us)
    assert "free cores" in p.bound
    assert p.error == pytest.approx(p.events_per_s / 30_000 - 1)
    assert predict_here(c, 1, measured=20_000).error == 0


def test_the_table_has_a_row_per_target_and_checks_both_runs() -> None:
    table = markdown(throughput_result(), Assumptions())
    for target in ("| 10,000 |", "| 100,000 |", "| 1,000,000 |"):
        assert target in table
    assert "- 2 process(es): predicted" in table and "measured 30,000" in table
    assert "1 process(es)" not in table  # its rate is the input, not a check


def test_the_generated_block_replaces_only_what_is_between_its_markers() -> None:
    doc = f"before\n{BEGIN}\nold table\n{END}\nafter\n"
    assert replace_block(doc, "new table\n") == f"before\n{BEGIN}\nnew table\n{END}\nafter\n"
    with pytest.raises(ValueError, match="no block"):
        replace_block("no markers here", "table")


def test_a_cost_too_small_to_sample_bounds_nothing_instead_of_dividing_by_zero() -> None:
    idle = {"worker_cores": 0.0, "harness_cores": 0.0, "broker_cores": 0.0,
            "redis_cores": 0.0, "machine_busy_cores": 0.0}  # fmt: skip
    one = {"processes": 1, "events_per_s": 20_000, "records_per_s": 22_000, "cpu": idle}
    result = throughput_result(product_1proc=one)
    c = costs(result)
    assert process_capacity(c, Assumptions()).events_per_s == 20_000  # its measured rate
    assert shard_capacity(c).events_per_s == 120_000  # the script limit
    assert "| 1,000,000 |" in markdown(result, Assumptions())
