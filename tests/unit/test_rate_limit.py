"""The token bucket behind the gateway's per-connection request limit."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.notify.rate_limit import TokenBucket


def test_a_burst_passes_then_requests_wait_for_the_refill() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, 0.0) == pytest.approx(0.1)
    assert bucket.take(1, 0.05) == pytest.approx(0.05)  # a refused request spends nothing
    assert bucket.take(1, 0.1) == 0.0
    assert bucket.take(2, 0.1) == pytest.approx(0.2)


def test_a_request_larger_than_the_burst_waits_for_a_full_bucket() -> None:
    bucket = TokenBucket(rate=1, burst=4, now=0.0)
    assert bucket.take(10, 0.0) == 0.0
    assert bucket.take(10, 1.0) == pytest.approx(3.0)
    assert bucket.take(10, 4.0) == 0.0


def test_a_clock_going_back_grants_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(1, 10.0) == 0.0
    assert bucket.take(1, 5.0) > 0
    assert bucket.take(1, 10.5) > 0


@given(times=st.lists(st.floats(0, 100), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(times: list[float]) -> None:
    times.sort()
    bucket = TokenBucket(rate=5, burst=8, now=times[0])
    passed = sum(bucket.take(1, t) == 0.0 for t in times)
    assert passed <= 8 + 5 * (times[-1] - times[0]) + 1e-9


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_bucket_that_could_never_pass_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        TokenBucket(rate, burst, 0.0)
