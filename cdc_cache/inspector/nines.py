"""Consistency as nines over sliding windows (pure).

``nines = -log10(inconsistent / checks)``: 99.9 % consistent checks are 3 nines. A window
without any inconsistency has infinitely many (the measurement cannot tell more than "no
inconsistency in N checks"), and a window with fewer than ``min_checks`` checks has none
to speak of (NaN): one bad check among ten would otherwise read as one nine and alert.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

WINDOWS: Final = {"5m": 300, "1h": 3600}


def nines_of(checks: int, inconsistent: int, min_checks: int = 1) -> float:
    """The nines of ``checks`` with ``inconsistent`` among them (see the module docstring)."""
    if checks < max(min_checks, 1):
        return math.nan
    if inconsistent <= 0:
        return math.inf
    return -math.log10(min(inconsistent, checks) / checks)


class Windows:
    """Checks and inconsistent checks per second, kept for the longest window."""

    def __init__(self, spans_s: tuple[int, ...] = tuple(WINDOWS.values())) -> None:
        self._longest = max(spans_s)
        self._seconds: deque[list[int]] = deque()  # [second, checks, inconsistent]

    def add(self, now: float, *, inconsistent: bool) -> None:
        """Count one check made at ``now`` (seconds, any monotonic clock)."""
        second = int(now)
        if not self._seconds or self._seconds[-1][0] != second:
            self._seconds.append([second, 0, 0])
        self._seconds[-1][1] += 1
        self._seconds[-1][2] += int(inconsistent)
        self._forget(now)

    def totals(self, span_s: int, now: float) -> tuple[int, int]:
        """Checks and inconsistent checks of the last ``span_s`` seconds before ``now``."""
        self._forget(now)
        start = int(now) - span_s
        checks = bad = 0
        for second, count, inconsistent in reversed(self._seconds):
            if second <= start:
                break
            checks += count
            bad += inconsistent
        return checks, bad

    def _forget(self, now: float) -> None:
        while self._seconds and self._seconds[0][0] <= int(now) - self._longest:
            self._seconds.popleft()
