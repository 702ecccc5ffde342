"""Topics created after start (a new table, its connector's heartbeat topic) picked up.

Bytewax lists a source's partitions once, when the flow starts, and cannot add one to a
running flow. So the worker lists the topics every ``topic_refresh_s``; once the brokers
hold a topic to read that the flow does not read, the flow is ended gracefully (each source
partition after its current batch, as on SIGTERM) and started again on the new list from
its recovery snapshot: the partitions it read resume where they were, the new ones start at
their beginning, and what is replayed past the snapshot is version-gated. Nothing is lost.

The processes of a cluster must run one flow: process 0 lists the topics and publishes the
list (``cdc:topics``, a JSON list); every process restarts onto the published list when it
holds a topic its flow does not read. A topic that disappears does not restart the flow
(the continuity guard judges a topic deleted under a reader).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import orjson

from cdc_cache.core.keys import ns
from cdc_cache.sink.connection import REDIS_ERRORS, Client

log = logging.getLogger("cdc_cache.worker")


class TopicWatch:
    """Lists the topics in a thread; :meth:`follow` says when a flow must restart.

    ``find`` lists the topics to read now (None when it cannot tell). ``board`` (a Redis
    client) is where a cluster's processes share process 0's list; without one the list
    found here is used.
    """

    def __init__(
        self,
        find: Callable[[], list[str] | None],
        interval_s: float,
        *,
        leader: bool = True,
        board: Client | None = None,
    ) -> None:
        self._find = find
        self._interval_s = interval_s
        self._leader = leader
        self._board = board
        self._lock = threading.Lock()
        self._reading: frozenset[str] = frozenset()
        self._wanted: list[str] = []
        self._restart: threading.Event | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdc-topics", daemon=True)

    def follow(self, reading: list[str], restart: threading.Event) -> None:
        """The flow that starts now reads ``reading``; set ``restart`` once it should not.

        Process 0 publishes ``reading`` at once: the others never follow a list a previous
        run left behind.
        """
        with self._lock:
            self._reading, self._wanted, self._restart = frozenset(reading), reading, restart
        if self._leader:
            self._shared(reading)
        if not self._thread.is_alive() and self._interval_s > 0:
            self._thread.start()

    def wanted(self) -> list[str]:
        """The topics the next flow reads."""
        with self._lock:
            return list(self._wanted)

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def check(self) -> bool:
        """One look: True when the flow was asked to restart onto new topics."""
        topics = self._shared(self._find() if self._leader else None)
        if topics is None:
            return False
        with self._lock:
            new = sorted(set(topics) - self._reading)
            if not new or self._restart is None or self._restart.is_set():
                return False
            self._wanted = topics
            restart = self._restart
        log.warning(
            "new topics to read: restarting the flow from its recovery snapshot",
            extra={"new_topics": new, "topics": topics},
        )
        restart.set()
        return True

    def _shared(self, found: list[str] | None) -> list[str] | None:
        """Process 0's list, published by it (or ``found``, without a board)."""
        if self._board is None:
            return found
        try:
            if found is not None:
                self._board.set(ns().topics, orjson.dumps(found))
            raw = self._board.get(ns().topics)
        except REDIS_ERRORS as exc:
            log.warning("topics: Redis unavailable", extra={"error": str(exc)})
            return None
        try:
            listed = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError:
            listed = None
        if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
            if raw is not None:
                log.error(f"topics: {ns().topics} holds no list of topics; delete it")
            return None
        return listed

    def _run(self) -> None:
        while not self._closing.wait(self._interval_s):
            try:
                self.check()
            except Exception:  # never the end of the thread that finds new topics
                log.exception("topics: listing failed; trying again")
