"""Retry transient failures forever with jittered exponential backoff.

Skipping an invalidation leaves a stale cache, so a transient error (Redis or Kafka down,
a timeout) is retried until it succeeds; meanwhile lag grows and the TTL fallback engages.
Anything else is re-raised at once for the dead-letter path. Jitter spreads the retries of
many workers so a recovering server is not hit by all of them in the same instant.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from cdc_cache.core import metrics
from cdc_cache.core.errors import StopRequested, TransientError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``attempt`` (1-based): ``initial * multiplier**(attempt-1)``.

    The delay is capped at ``maximum``, then reduced by a random fraction of up to
    ``jitter`` (0 = none, 1 = anywhere in ``(0, base]``), so it never exceeds the cap.
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (
            0 < self.initial <= self.maximum and self.multiplier >= 1 and 0 <= self.jitter <= 1
        ):
            msg = (
                f"invalid {self!r}: need 0 < initial <= maximum, multiplier >= 1 "
                "and 0 <= jitter <= 1"
            )
            raise ValueError(msg)

    def base(self, attempt: int) -> float:
        """The un-jittered delay of ``attempt``; exponent bounded so it never overflows."""
        if self.multiplier == 1:
            return self.initial
        steps_to_cap = math.ceil(math.log(self.maximum / self.initial, self.multiplier))
        exponent = min(max(attempt - 1, 0), steps_to_cap)
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The jittered delay of ``attempt``, within ``[base * (1 - jitter), base]``."""
        return self.base(attempt) * (1 - self.jitter * rng.random())


# One generator for every call's jitter: seeding one reads 2.5 KB from the OS, once per
# call on the writer's path (each batch) before it was shared.
_JITTER: Final = random.Random()


def _is_transient_error(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


def retry_forever(
    fn: Callable[[], T],
    *,
    backoff: Backoff | None = None,
    is_transient: Callable[[BaseException], bool] = _is_transient_error,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn`` until it returns; sleep and retry on transient errors, re-raise others.

    ``on_retry(attempt, delay, exc)`` runs before each sleep (for logs and a retry metric);
    ``attempt`` counts failures so far, starting at 1.
    """
    policy = backoff or Backoff()
    chance = rng or _JITTER
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            delay = policy.delay(attempt, chance)
            if on_retry is not None:
                on_retry(attempt, delay, exc)
            sleep(delay)


def stoppable_sleep(
    stop: threading.Event, waiting_for: str, told: Callable[[float], object] | None = None
) -> Callable[[float], None]:
    """A ``sleep`` for :func:`retry_forever` that a stop request ends with StopRequested.

    A worker asked to stop while a server is down then exits instead of hanging; the batch
    it could not finish is replayed after a restart. ``told`` hears of each wait (its
    seconds) first: the lag tracker, for which a flow waiting to retry is not stuck.
    """

    def sleep(seconds: float) -> None:
        if told is not None:
            told(seconds)
        if stop.wait(seconds):
            msg = f"stop requested while {waiting_for} was unavailable"
            raise StopRequested(msg)

    return sleep


OnRetry = Callable[[int, float, BaseException], None]


def retry_reporter(target: str, message: str, log: logging.Logger, **context: object) -> OnRetry:
    """An ``on_retry`` callback: every wait for ``target`` is counted and logged.

    The count goes to ``cdc_cache_retries_total{target}``, so a server outage shows in the
    metrics whichever component waits for it.
    """

    def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
        metrics.RETRIES.labels(target).inc()
        log.warning(
            message,
            extra={**context, "attempt": attempt, "delay_s": round(delay, 3), "error": str(exc)},
        )

    return on_retry
