"""Rate-limited reporting: one line per key and interval, with a count of what was held back.

Servers that are down make clients repeat the same complaint several times a second;
the log keeps one line of each per interval and says how many it left out.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable


class Throttle:
    """Admits one event per key every ``every_s``; safe from any thread."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._admitted_at: dict[Hashable, float] = {}
        self._held_back: Counter[Hashable] = Counter()

    def admit(self, key: Hashable) -> int | None:
        """How many of ``key`` were held back since it was last admitted, or None.

        None (and one more held back) within ``every_s`` of the last admitted ``key``.
        """
        now = self._clock()
        with self._lock:
            last = self._admitted_at.get(key)
            if last is not None and now - last < self._every_s:
                self._held_back[key] += 1
                return None
            self._admitted_at[key] = now
            return self._held_back.pop(key, 0)

    def reset(self) -> None:
        """Admit the next event of every key at once (e.g. a new outage began)."""
        with self._lock:
            self._admitted_at.clear()
