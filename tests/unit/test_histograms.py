"""observe_all exposes what the same observations one by one expose."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from cdc_cache.core.histograms import observe_all, quantile

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 60)
amounts = st.floats(min_value=0, max_value=1e6, allow_nan=False) | st.sampled_from(BUCKETS)


def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    """The histogram's exposed samples (buckets, count, sum) by name and bound."""
    (metric,) = histogram.collect()
    return {
        (s.name, s.labels.get("le", "")): s.value for s in metric.samples if "created" not in s.name
    }


def fresh(name: str = "latency_seconds") -> Histogram:
    return Histogram(name, "test", buckets=BUCKETS, registry=CollectorRegistry())


@given(st.lists(st.lists(amounts, max_size=30), max_size=5))
def test_observing_batches_all_at_once_exposes_what_observing_each_does(
    batches: list[list[float]],
) -> None:
    one_by_one, all_at_once = fresh(), fresh()
    for batch in batches:
        for amount in batch:
            one_by_one.observe(amount)
        observe_all(all_at_once, batch)
    expected, got = samples(one_by_one), samples(all_at_once)
    sums = [k for k in expected if k[0].endswith("_sum")]
    assert {k: v for k, v in got.items() if k not in sums} == {
        k: v for k, v in expected.items() if k not in sums
    }
    for key in sums:  # summed in another order: equal up to rounding
        assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-9)


def test_an_amount_on_a_bound_counts_in_that_bound() -> None:
    histogram = fresh()
    observe_all(histogram, [0.025, 0.0251, 0.0])
    got = samples(histogram)
    assert got["latency_seconds_bucket", "0.01"] == 1
    assert got["latency_seconds_bucket", "0.025"] == 2
    assert got["latency_seconds_bucket", "0.05"] == 3
    assert got["latency_seconds_count", ""] == 3


def test_a_labelled_parent_cannot_be_observed() -> None:
    parent = Histogram("by_table", "test", ["table"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="missing label values"):
        observe_all(parent, [1.0])


def test_a_quantile_is_interpolated_within_its_bucket_as_prometheus_does() -> None:
    buckets = [(0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.7) == pytest.approx(0.15)  # 20 of the 40 between 0.1 and 0.2
    assert quantile(buckets, 0.99) == pytest.approx(0.47)


def test_a_quantile_in_the_open_bucket_is_the_highest_bound_and_none_without_observations() -> (
    None
):
    assert quantile([(0.1, 1.0), (float("inf"), 4.0)], 0.99) == 0.1
    assert quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert quantile([], 0.5) is None
