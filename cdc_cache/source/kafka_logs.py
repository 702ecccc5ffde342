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
import time
from collections.abc import Callable
from typing import Any, Final

from cdc_cache.core.throttle import Throttle

log = logging.getLogger("cdc_cache.kafka")


class KafkaLogs:
    """A ``logger`` for confluent-kafka clients (it calls ``log(level, fmt, *args)``)."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._throttle = Throttle(every_s, clock)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """One librdkafka line: ``fmt`` is ``"%s [%s] %s"`` (facility, client, message)."""
        facility, client, message = (*(str(a) for a in args), "", "", "")[:3]
        left_out = self._throttle.admit((level, facility))
        if left_out is None:
            return
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
