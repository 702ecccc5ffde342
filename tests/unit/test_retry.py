from __future__ import annotations

import logging
import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core import metrics
from cdc_cache.core.errors import StopRequested, TransientError
from cdc_cache.core.retry import Backoff, retry_forever, retry_reporter, stoppable_sleep


class FakeClock:
    """Records sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def failing(times: int, exc: Exception, result: str = "ok"):
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc
        return result

    return fn, calls


def test_delays_grow_exponentially_and_are_capped_without_jitter() -> None:
    clock = FakeClock()
    fn, calls = failing(8, TransientError("redis down"))
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.0)

    assert retry_forever(fn, backoff=backoff, sleep=clock.sleep) == "ok"

    assert calls["n"] == 9
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


@given(
    initial=st.floats(0.001, 5),
    factor=st.floats(1, 100),
    multiplier=st.floats(1, 10),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_jittered_delays_stay_within_bounds(
    initial: float, factor: float, multiplier: float, jitter: float, seed: int
) -> None:
    backoff = Backoff(initial, initial * factor, multiplier, jitter)
    rng = random.Random(seed)
    for attempt in (1, 2, 3, 10, 100, 10_000):
        base = backoff.base(attempt)
        delay = backoff.delay(attempt, rng)
        assert initial <= base <= backoff.maximum
        assert base * (1 - jitter) - 1e-12 <= delay <= base


def test_jitter_spreads_delays() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    rng = random.Random(7)
    delays = {backoff.delay(1, rng) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) >= 0.5


def test_retries_without_end_until_success() -> None:
    clock = FakeClock()
    fn, calls = failing(500, TransientError("still down"))
    assert retry_forever(fn, backoff=Backoff(maximum=0.5), sleep=clock.sleep) == "ok"
    assert calls["n"] == 501
    assert max(clock.sleeps) <= 0.5


def test_non_transient_errors_are_not_retried() -> None:
    clock = FakeClock()
    fn, calls = failing(1, ValueError("poison"))
    with pytest.raises(ValueError, match="poison"):
        retry_forever(fn, sleep=clock.sleep)
    assert calls["n"] == 1
    assert clock.sleeps == []


def test_on_retry_called_before_each_sleep() -> None:
    clock = FakeClock()
    seen: list[tuple[int, float, str]] = []
    fn, _ = failing(3, TransientError("timeout"))

    retry_forever(
        fn,
        on_retry=lambda attempt, delay, exc: seen.append((attempt, delay, str(exc))),
        sleep=clock.sleep,
        rng=random.Random(1),
    )

    assert [s[0] for s in seen] == [1, 2, 3]
    assert [s[1] for s in seen] == clock.sleeps
    assert {s[2] for s in seen} == {"timeout"}


def test_custom_transient_predicate() -> None:
    clock = FakeClock()
    fn, calls = failing(2, ConnectionError("refused"))
    result = retry_forever(
        fn, is_transient=lambda e: isinstance(e, ConnectionError), sleep=clock.sleep
    )
    assert result == "ok"
    assert calls["n"] == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": 2, "maximum": 1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_invalid_backoff_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid Backoff"):
        Backoff(**kwargs)


def test_retry_reporter_counts_the_target_and_logs_the_wait(caplog) -> None:
    counter = metrics.RETRIES.labels("unit_target")
    before = counter._value.get()
    report = retry_reporter("unit_target", "unit server down", logging.getLogger("t"), step="x")
    with caplog.at_level(logging.WARNING, logger="t"):
        report(3, 0.1234, ConnectionError("refused"))
    assert counter._value.get() == before + 1
    (record,) = caplog.records
    assert record.getMessage() == "unit server down"
    assert (record.step, record.attempt, record.delay_s, record.error) == ("x", 3, 0.123, "refused")


def test_a_stoppable_sleep_tells_of_each_wait_before_it_waits():
    """The sink's waits to retry keep its flow from being judged stuck (mode.lag)."""
    told: list[tuple[float, bool]] = []
    stop = threading.Event()
    sleep = stoppable_sleep(stop, "Redis", lambda s: told.append((s, stop.is_set())))
    sleep(0.01)
    stop.set()
    with pytest.raises(StopRequested):
        sleep(5)
    assert told == [(0.01, False), (5, True)]
