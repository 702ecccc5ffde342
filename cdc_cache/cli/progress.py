"""Progress of long commands on stderr: a bar on a terminal, periodic lines otherwise.

stdout keeps the result (text or ``--json``), so progress never mixes into what a script
reads; a log file or CI output gets a line every few seconds instead of a redrawn bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 30


class Progress:
    """Called as ``progress(done, total, note)`` by long work; ``close()`` ends the bar."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._terminal = self._stream.isatty() if terminal is None else terminal
        self._every_s = every_s
        self._clock = clock
        self._last_line: float | None = None
        self._last: tuple[int, int, str] | None = None
        self._drawn = 0

    def __call__(self, done: int, total: int, note: str = "") -> None:
        """Report ``done`` of ``total`` units (``note``: what is being done now)."""
        if (done, total, note) == self._last:
            return
        self._last = (done, total, note)
        if self._terminal:
            self._draw(done, total, note)
            return
        now = self._clock()
        finished = total > 0 and done >= total
        if self._last_line is None or finished or now - self._last_line >= self._every_s:
            self._last_line = now
            self._stream.write(f"{self._label}: {_count(done, total)} {note}".rstrip() + "\n")
            self._stream.flush()

    def _draw(self, done: int, total: int, note: str) -> None:
        filled = BAR_WIDTH * min(done, total) // total if total > 0 else 0
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        text = f"{self._label} [{bar}] {_count(done, total)} {note}".rstrip()
        self._stream.write("\r" + text.ljust(self._drawn))
        self._drawn = len(text)
        self._stream.flush()

    def close(self) -> None:
        """End the bar's line (a terminal); nothing otherwise."""
        if self._terminal and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _count(done: int, total: int) -> str:
    if total <= 0:
        return f"{done}"
    return f"{done}/{total} ({100 * done // total} %)"
