"""The mode thread failing: logged with its stack, and the worker told to stop."""

from __future__ import annotations

import logging
import threading

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cdc_cache.fallback.runtime import ModeRuntime
from cdc_cache.mode.controller import ModeConfig
from cdc_cache.mode.lag import LagTracker
from cdc_cache.tools.devstack.process import free_port


class BrokenClock:
    """Answers until ``calls`` calls were made, then fails as a bug would."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def __call__(self) -> float:
        self.calls -= 1
        if self.calls < 0:
            msg = "a bug in the mode loop"
            raise OverflowError(msg)
        return 1_000_000.0


def test_a_failing_mode_thread_is_logged_and_stops_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = ModeRuntime(
        client=Redis(port=free_port(), retry=Retry(NoBackoff(), 0)),  # nothing answers
        tracker=LagTracker(BrokenClock(calls=1)),  # fails in the first tick, before Redis
        config=ModeConfig(slo_s=3, recover_s=1, window_s=2),
        fallback_ttl_ms=5000,
        prefixes=["stock:"],
        interval_s=0.01,
        stall_after_s=10,
    )
    stopped = threading.Event()
    with caplog.at_level(logging.WARNING, logger="cdc_cache.mode"):
        runtime.start(on_failure=stopped.set)
        assert stopped.wait(10), "the worker was not told that its mode thread failed"
    runtime.close()
    assert isinstance(runtime.failure, OverflowError)
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "the mode thread failed" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is runtime.failure
