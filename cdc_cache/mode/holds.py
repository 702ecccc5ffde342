"""The holds raised in one process: ``ttl`` mode at once, for as long as each lasts.

Parts of the worker that find the cache cannot be known right (a source log it cannot
order, Redis refusing writes, replicas behind, a gap in a topic) raise a hold of their
cause (``controller.Cause``) here; the mode runtime reads the active ones every tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cdc_cache.core import metrics
from cdc_cache.mode.controller import TABLE_CAUSES, Cause, Hold

log = logging.getLogger("cdc_cache.mode")


class Holds:
    """The holds raised in this process, keyed by cause and scope; thread-safe.

    ``scope`` tells instances of one cause apart (a source, a topic partition, a Redis
    node), so each clears on its own. Raising an active hold again only updates its
    reason; raising and clearing are logged once each and exported as
    ``cdc_cache_mode_holds{cause}``. A hold raised ``for_s`` seconds is a *timed* hold:
    it ends by itself then (raised again, it lasts to the later end), for conditions that
    only time resolves, such as entries that must expire.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._active: dict[tuple[Cause, str], tuple[str, float | None]] = {}
        self._clock = clock

    def hold(self, cause: Cause, scope: str, reason: str, *, for_s: float | None = None) -> None:
        """Force ``ttl`` mode for ``reason`` until :meth:`clear` (or for ``for_s`` seconds)."""
        hold = Hold(cause, reason, scope if cause in TABLE_CAUSES else "")  # validates
        with self._lock:
            previous = self._active.get((cause, scope))
            until = None if for_s is None else self._clock() + for_s
            if until is not None and previous is not None and previous[1] is not None:
                until = max(until, previous[1])
            self._active[(cause, scope)] = (reason, until)
            count = sum(c is cause for c, _ in self._active)
        metrics.MODE_HOLDS.labels(cause.value).set(count)
        if previous is None:
            what = f"table {scope}" if cause in TABLE_CAUSES else "the cache"
            log.warning(
                f"hold raised: {what} falls back to ttl mode",
                extra={"cause": hold.label, "scope": scope, "reason": reason, "for_s": for_s},
            )

    def clear(self, cause: Cause, scope: str) -> None:
        """The condition behind a hold is over (nothing happens if it was not held)."""
        with self._lock:
            found = self._active.pop((cause, scope), None)
            count = sum(c is cause for c, _ in self._active)
        if found is not None:
            metrics.MODE_HOLDS.labels(cause.value).set(count)
            log.warning(
                "hold cleared", extra={"cause": cause.value, "scope": scope, "reason": found[0]}
            )

    def active(self) -> tuple[Hold, ...]:
        """The active holds, in a stable order (timed holds that ran out are cleared)."""
        now = self._clock()
        with self._lock:
            ended = [key for key, (_, until) in self._active.items() if until and until <= now]
        for cause, scope in ended:
            self.clear(cause, scope)
        with self._lock:
            return tuple(
                sorted(
                    Hold(cause, reason, scope if cause in TABLE_CAUSES else "")
                    for (cause, scope), (reason, _) in self._active.items()
                )
            )

    def lasting(self, cause: Cause) -> bool:
        """True while a hold of ``cause`` is active that only a condition can end (not time)."""
        with self._lock:
            return any(c is cause and until is None for (c, _), (_, until) in self._active.items())
