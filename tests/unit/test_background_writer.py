"""The background writer: order kept, bounded, drained before a snapshot, failures surfaced
on the caller's thread with nothing written after them, stops ending its waits."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cdc_cache.core.errors import ConfigError, StopRequested, TransientError
from cdc_cache.core.retry import Backoff, retry_forever, stoppable_sleep
from cdc_cache.sink.background import BackgroundWriter
from dataflows.sink import _RedisPartition

WAIT_S = 10  # generous: a loaded machine


def _returns_within(call: Callable[[], object], seconds: float) -> threading.Thread:
    """Start ``call`` on a thread; the caller checks whether it is still blocked."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread


class Gate:
    """A write that records each batch once the gate opens."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.written: list[Any] = []
        self.started = threading.Semaphore(0)

    def write(self, batch: Any) -> None:
        self.started.release()
        assert self.open.wait(WAIT_S)
        self.written.append(batch)


def test_batches_are_written_in_the_order_they_were_handed_over() -> None:
    rnd = random.Random(3)
    written: list[int] = []

    def write(items: list[int]) -> None:
        time.sleep(rnd.random() / 2000)
        written.extend(items)

    background = BackgroundWriter(write, depth=3, name="test")
    for batch in range(300):
        background.submit([batch, batch])
        time.sleep(rnd.random() / 2000)
    background.close()
    assert written == [n for batch in range(300) for n in (batch, batch)]


def test_batches_queued_behind_a_write_go_out_together_in_their_order() -> None:
    gate = Gate()
    background = BackgroundWriter(gate.write, depth=4, name="test")
    background.submit([1])
    assert gate.started.acquire(timeout=WAIT_S)  # [1] is being written
    background.submit([2, 3])
    background.submit([4])
    gate.open.set()
    background.close()
    assert gate.written == [[1], [2, 3, 4]]


def test_submit_waits_while_depth_batches_are_unwritten() -> None:
    gate = Gate()
    background = BackgroundWriter(gate.write, depth=2, name="test")
    background.submit([1])
    background.submit([2])
    assert background.in_flight == 2
    third = _returns_within(lambda: background.submit([3]), 0.3)
    assert third.is_alive(), "a third batch was taken while two were unwritten"
    gate.open.set()
    third.join(WAIT_S)
    assert not third.is_alive()
    background.close()
    assert [n for items in gate.written for n in items] == [1, 2, 3]


def test_drain_returns_only_once_every_handed_batch_is_written() -> None:
    gate = Gate()
    background = BackgroundWriter(gate.write, depth=4, name="test")
    for batch in range(3):
        background.submit([batch])
    drain = _returns_within(background.drain, 0.3)
    assert drain.is_alive(), "drain returned while batches were unwritten"
    gate.open.set()
    drain.join(WAIT_S)
    assert not drain.is_alive()
    assert [n for items in gate.written for n in items] == [0, 1, 2]
    background.close()


@pytest.mark.parametrize("waits", [True, False])
def test_a_snapshot_covers_every_batch_written_before_it(
    monkeypatch: pytest.MonkeyPatch, waits: bool
) -> None:
    """What Bytewax records after ``snapshot()`` must be in Redis; without the wait it is not."""
    if not waits:
        monkeypatch.setattr(BackgroundWriter, "drain", lambda self: None)
    gate = Gate()
    writer: Any = type("Writer", (), {"write": staticmethod(gate.write)})()
    partition = _RedisPartition(writer, depth=4, name="test")
    partition.write_batch([["a"], ["b"]])
    partition.write_batch([["c"]])
    opener = threading.Timer(0.2, gate.open.set)
    opener.start()
    partition.snapshot()
    recorded = [item for items in gate.written for item in items]  # what the snapshot vouches for
    opener.join()
    partition.close()
    assert [item for items in gate.written for item in items] == ["a", "b", "c"]
    if waits:
        assert recorded == ["a", "b", "c"]
    else:
        assert recorded == [], "without the wait the snapshot runs ahead of Redis"


def test_the_lag_tracker_hears_of_a_batch_only_once_it_is_written() -> None:
    """A sink stuck on Redis while the sources read on (threads that do not hold the sink)
    must show as lag: what was read and not applied is not fresh."""
    gate = Gate()
    writer: Any = type("Writer", (), {"write": staticmethod(gate.write)})()
    observed: list[Any] = []
    partition = _RedisPartition(writer, depth=4, name="test", observe=observed.append)
    partition.write_batch([["a"]])
    assert gate.started.acquire(timeout=WAIT_S)
    time.sleep(0.1)
    assert observed == [], "heard of before it was written"
    gate.open.set()
    partition.snapshot()
    partition.close()
    assert observed == [["a"]]


@pytest.mark.parametrize("error", [StopRequested("stop"), ConfigError("fix it"), OSError("x")])
def test_a_failed_write_raises_on_the_callers_thread_and_nothing_after_it_is_written(
    error: Exception,
) -> None:
    written: list[int] = []
    release = threading.Event()
    writing_2 = threading.Event()

    def write(items: list[int]) -> None:
        if items == [2]:
            writing_2.set()
            assert release.wait(WAIT_S)
            raise error
        written.extend(items)

    background = BackgroundWriter(write, depth=4, name="test")
    background.submit([1])
    background.drain()
    background.submit([2])
    assert writing_2.wait(WAIT_S)
    background.submit([3])  # queued behind the failing batch
    release.set()
    with pytest.raises(type(error)) as raised:
        background.drain()
    assert raised.value is error
    with pytest.raises(type(error)):
        background.submit([4])
    with pytest.raises(type(error)):
        background.drain()
    background.close()  # the caller was told: a cleanup does not raise it again
    assert written == [1]


def test_close_raises_a_failure_the_caller_has_not_seen_yet() -> None:
    def write(items: list[int]) -> None:
        raise ConfigError("credentials rotated")

    background = BackgroundWriter(write, depth=1, name="test")
    background.submit([1])
    with pytest.raises(ConfigError, match="credentials rotated"):
        background.close()


def test_a_stop_request_ends_a_write_waiting_for_redis_and_the_drain_with_it() -> None:
    stop = threading.Event()
    sleep = stoppable_sleep(stop, "Redis")

    def write(items: list[int]) -> None:
        def down() -> None:
            raise TransientError("Redis down")

        retry_forever(down, backoff=Backoff(initial=5, maximum=5, jitter=0), sleep=sleep)

    background = BackgroundWriter(write, depth=2, name="test")
    background.submit([1])
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StopRequested):
        background.drain()
    assert time.monotonic() - started < 4, "the stop did not end the wait promptly"
    background.close()


def test_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BackgroundWriter(lambda items: None, depth=0, name="test")
