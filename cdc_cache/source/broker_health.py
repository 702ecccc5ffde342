"""Whether the Kafka brokers answer this process, from librdkafka's error callback and fetches.

librdkafka retries a broker outage by itself and reports it only to the error callback
(``error_cb``): without one, an outage shows nowhere but on stderr while the consumer lag
looks like a healthy, stale 0. :class:`BrokerHealth` counts those errors by code, sets
``cdc_cache_broker_up`` to 0 on an outage and back to 1 on the next successful fetch, and
logs each error code at most once per ``log_every_s`` (librdkafka repeats them on every
reconnect attempt).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaError

from cdc_cache.core import metrics
from cdc_cache.core.throttle import Throttle

log = logging.getLogger("cdc_cache.broker")

# The codes by which librdkafka says it cannot reach the brokers at all (or lost one).
DOWN_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})


class BrokerHealth:
    """Broker reachability of one process; its methods are safe from any worker thread."""

    def __init__(
        self,
        *,
        log_every_s: float = 30.0,
        probe_every_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe_every_s = probe_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._up: bool | None = None  # unknown until the first fetch answers or fails
        self._down_since: float | None = None
        self._throttle = Throttle(log_every_s, clock)
        self._probed_at = float("-inf")

    @property
    def up(self) -> bool | None:
        """True once a fetch answered, False from a reported outage, None before either."""
        with self._lock:
            return self._up

    def on_error(self, error: KafkaError) -> None:
        """The ``error_cb`` of librdkafka: count the error, mark an outage, log (rate-limited)."""
        code = error.name()
        metrics.CONSUMER_ERRORS.labels(code).inc()
        now = self._clock()
        with self._lock:
            if error.code() in DOWN_CODES and self._up is not False:
                self._up, self._down_since = False, now
                metrics.BROKER_UP.set(0)
        repeated = self._throttle.admit(code)
        if repeated is None:
            return
        log.warning(
            "kafka client error",
            extra={
                "code": code,
                "error": error.str(),
                "fatal": error.fatal(),
                "repeated": repeated,
            },
        )

    def reachable(self) -> None:
        """A fetch (or probe) was answered: the brokers are up."""
        with self._lock:
            if self._up:
                return
            down_since = self._down_since
            self._up, self._down_since = True, None
            self._throttle.reset()  # the next outage is logged at once
            metrics.BROKER_UP.set(1)
        if down_since is not None:
            log.warning(
                "brokers reachable again",
                extra={"down_s": round(self._clock() - down_since, 1)},
            )

    def should_probe(self) -> bool:
        """True at most every ``probe_every_s`` while the brokers are not known to be up.

        An idle partition fetches nothing, so a recovered broker would not be noticed until
        the next record: the caller then asks the broker something cheap instead.
        """
        now = self._clock()
        with self._lock:
            if self._up or now - self._probed_at < self._probe_every_s:
                return False
            self._probed_at = now
            return True
