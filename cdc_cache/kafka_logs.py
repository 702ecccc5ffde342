"""librdkafka's own log lines, as the worker's JSON log lines and rate-limited.

Left alone, librdkafka prints every line to stderr itself (``%3|...|FAIL|...``), several a
second per client while a broker is unreachable, drowning the worker's log in lines no
log pipeline parses. Every Kafka client the worker makes gets ``"logger": KAFKA_LOGS`` in
its configuration: confluent-kafka then hands each line to :meth:`KafkaLogs.log` on the
thread that polls the client, and each (level, facility) is logged at most once per
``every_s``, with how many lines of it were left out since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger("cdc_cache.kafka")


class KafkaLogs:
    """A ``logger`` for confluent-kafka clients (it calls ``log(level, fmt, *args)``)."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[int, str], float] = {}
        self._left_out: Counter[tuple[int, str]] = Counter()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """One librdkafka line: ``fmt`` is ``"%s [%s] %s"`` (facility, client, message)."""
        facility, client, message = (*(str(a) for a in args), "", "", "")[:3]
        key = (level, facility)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every_s:
                self._left_out[key] += 1
                return
            self._last[key] = now
            left_out = self._left_out.pop(key, 0)
        log.log(
            level,
            "librdkafka: %s",
            message,
            extra={"facility": facility, "client": client, "left_out": left_out},
        )


KAFKA_LOGS: Final = KafkaLogs()


def with_logger(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` for a confluent-kafka client, its log lines routed to :data:`KAFKA_LOGS`."""
    return {**config, "logger": KAFKA_LOGS}
