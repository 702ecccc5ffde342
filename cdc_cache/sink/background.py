"""Batches written on one background thread, in order, while the caller prepares the next.

The dataflow's sink hands each batch to :class:`BackgroundWriter` and returns, so the
worker decodes the next batch while Redis answers the last one. Batches that queued up
while a write was on its way go out together, as one batch, in their order: a writer that
fell behind catches up in fewer round trips, as the synchronous sink did when it read a
bigger batch after a slow write (else the queue adds its depth to the latency). ``drain``
is the barrier
that keeps recovery honest: it returns only once every batch handed over so far has been
written, and the sink calls it before Bytewax records an epoch's snapshot, so a snapshot
never runs ahead of Redis.

The first write that fails stops the thread: no later batch is written, and the very
exception it raised is raised on the caller's thread at its next ``submit``, ``drain`` or
``close``, as if the write had been synchronous (``submit`` and ``drain`` raise it again
every time after; ``close`` only if the caller has not been told yet, so a cleanup after
the failure surfaced does not raise it twice).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BackgroundWriter(Generic[T]):
    """Runs ``write(items)`` on one thread for the submitted batches, first in first out.

    At most ``depth`` batches are handed over and not yet written (those being written
    included): ``submit`` waits while that many are, which bounds memory and the work a
    ``drain`` may have to wait for. The batches queued when the thread takes work are
    written in one call, concatenated.
    """

    def __init__(self, write: Callable[[list[T]], object], depth: int, name: str) -> None:
        if depth < 1:
            msg = f"depth must be at least 1, got {depth}"
            raise ValueError(msg)
        self._write = write
        self._depth = depth
        self._queue: deque[list[T]] = deque()
        self._pending = 0  # handed over and not fully written, the one being written included
        self._failure: BaseException | None = None
        self._reported = False  # the failure was raised on the caller's thread
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, batch: list[T]) -> None:
        """Hand ``batch`` over to be written after those before it; waits while full."""
        with self._changed:
            self._changed.wait_for(lambda: self._failure is not None or self._pending < self._depth)
            self._raise_failure()
            self._queue.append(batch)
            self._pending += 1
            self._changed.notify_all()

    def drain(self) -> None:
        """Return once every batch handed over so far is written; raise what a write raised."""
        with self._changed:
            self._changed.wait_for(lambda: self._failure is not None or self._pending == 0)
            self._raise_failure()

    def close(self) -> None:
        """Drain, then end the thread; a failure already raised to the caller is not again."""
        try:
            with self._changed:
                if self._failure is not None and self._reported:
                    return
            self.drain()
        finally:
            with self._changed:
                self._closing = True
                self._changed.notify_all()
            self._thread.join()

    @property
    def in_flight(self) -> int:
        """How many batches are handed over and not yet written."""
        with self._changed:
            return self._pending

    def _raise_failure(self) -> None:
        if self._failure is not None:
            self._reported = True
            raise self._failure

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue) or self._closing)
                if not self._queue:
                    return
                taken = len(self._queue)
                queued = self._queue
                items = queued[0] if taken == 1 else [item for batch in queued for item in batch]
            try:
                self._write(items)
            except BaseException as exc:  # raised again on the caller's thread
                with self._changed:
                    self._failure = exc
                    self._queue.clear()  # nothing after a failed batch is written
                    self._changed.notify_all()
                return
            with self._changed:
                for _ in range(taken):
                    self._queue.popleft()
                self._pending -= taken
                self._changed.notify_all()
