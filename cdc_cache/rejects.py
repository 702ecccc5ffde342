"""Report a message that cannot be processed: one log line and the poison metrics.

Every rejection goes through here, wherever in the flow it was found, so each one is
counted once with the same fields.
"""

from __future__ import annotations

import logging

from cdc_cache import metrics
from cdc_cache.errors import PoisonMessage

log = logging.getLogger("cdc_cache.rejects")


def report_rejected(error: PoisonMessage, table: str) -> None:
    """Log and count ``error``; ``table`` is the change's table or the topic's."""
    metrics.RECORDS.labels("rejected").inc()
    metrics.POISON.labels(error.kind, table).inc()
    record = error.record
    log.error(
        "message rejected",
        extra={
            "kind": error.kind,
            "reason": error.reason,
            "table": table,
            "topic": record.topic if record else None,
            "partition": record.partition if record else None,
            "offset": record.offset if record else None,
        },
    )
