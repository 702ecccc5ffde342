"""A daemon thread that runs one piece of upkeep over and over until closed.

For work beside the dataflow (watching Redis memory, sweeping versions): a failure of one
round is logged and the next round tries again; closing ends the wait between rounds and
any wait the work does on :attr:`Periodic.closing`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Periodic:
    """Calls ``work`` every ``interval_s`` in a daemon thread named ``name``.

    An exception of one of ``errors`` types ends that round only: it is logged on ``log``
    with ``failure`` as the message.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], None],
        interval_s: float,
        *,
        errors: tuple[type[BaseException], ...],
        log: logging.Logger,
        failure: str,
    ) -> None:
        self.closing = threading.Event()
        self._name = name
        self._work = work
        self._interval_s = interval_s
        self._errors = errors
        self._log = log
        self._failure = failure
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop after the current round (waits up to 10 s for it)."""
        self.closing.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self.closing.wait(self._interval_s):
            try:
                self._work()
            except self._errors as exc:
                self._log.warning(self._failure, extra={"error": str(exc)})
