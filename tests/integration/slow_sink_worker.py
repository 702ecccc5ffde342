"""A worker whose Redis writes are slow and recorded, optionally with a snapshot that does
not wait for them: for tests only.

``python -m tests.integration.slow_sink_worker run ...`` is ``cdc-cache run`` with every
write delayed by :data:`DELAY_PER_ITEM_S` per item (a slow Redis: with a backlog to read,
the sink then always holds batches handed over and not yet written), appending the
Kafka partition and offset of every item it wrote to the file ``SLOW_SINK_LOG`` once
the write returned. With ``SLOW_SINK_EAGER_SNAPSHOT=1`` the sink's snapshot does not wait
for those batches: a deliberately injected bug, which lets a recovery snapshot run ahead
of Redis, for the crash test to catch. It lives under ``tests/``, which neither the package
nor the image ships, so no deployment can start it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from cdc_cache.cli import main
from cdc_cache.plan.route import Routed
from cdc_cache.sink.writer import CacheWriter, EventOutcome
from dataflows import sink

DELAY_PER_ITEM_S = 0.002
_write = CacheWriter.write


def _slow_recorded_write(self: CacheWriter, items: Sequence[Routed]) -> list[EventOutcome]:
    time.sleep(DELAY_PER_ITEM_S * len(items))
    outcomes = _write(self, items)
    lines = "".join(f"{item.record.partition} {item.record.offset}\n" for item in items)
    with open(os.environ["SLOW_SINK_LOG"], "a") as log:
        log.write(lines)
    return outcomes


def _snapshot_without_waiting(self: object) -> None:
    return None


if __name__ == "__main__":
    CacheWriter.write = _slow_recorded_write  # type: ignore[method-assign]
    if os.environ.get("SLOW_SINK_EAGER_SNAPSHOT") == "1":
        sink._RedisPartition.snapshot = _snapshot_without_waiting  # type: ignore[method-assign]
    main()
