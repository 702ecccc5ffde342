"""The gateway's stream reader stops when told to, even when a cancellation of it is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio as aredis

from cdc_cache.notify.hub import Hub


class LosingReader(Hub):
    """A reader whose first read cancelled drops the cancellation, as ``asyncio.wait_for``
    does in Python 3.11 (inside the Redis client) when the call completes just as its caller
    is cancelled."""

    def __init__(self) -> None:
        super().__init__(aredis.Redis(), block_ms=10)  # never connects: nothing is read
        self.reads = 0
        self.lost = 0

    async def discover(self, *, initial: bool = False) -> None:
        self._discovered_at = time.monotonic()

    async def _read_once(self) -> None:
        self.reads += 1
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost += 1  # the call returned anyway: the cancellation is gone


async def _until(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_a_reader_that_lost_its_cancellation_stops_when_told_to() -> None:
    async def scenario() -> None:
        hub = LosingReader()
        task = asyncio.create_task(hub.run())
        await _until(lambda: hub.reads > 0)
        task.cancel()
        await _until(lambda: hub.lost == 1)
        reads = hub.reads
        await asyncio.sleep(0.2)
        # The hazard: cancelled once, the reader goes on reading (a gateway that never exits).
        assert not task.done() and hub.reads > reads
        hub.stop()
        await asyncio.wait({task}, timeout=2)
        assert task.done() and task.exception() is None

    asyncio.run(scenario())
