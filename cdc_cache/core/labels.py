"""Metric label values taken from messages, bounded so a stream cannot grow them without end.

A table's or a connector's name comes from the message (its source block, its topic).
Each distinct value is a time series in every scrape for as long as the process lives,
so a producer writing ever new names (a hostile one, or a bug) would grow the worker's
memory and the monitoring system's. The tables the rules name always keep their names;
of other values, the first ``limit`` keep theirs and later ones read as ``_other``, which
is logged once per label and counted in ``cdc_cache_label_overflow_total{label}``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Final

from cdc_cache.core import metrics

log = logging.getLogger("cdc_cache.metrics")

OTHER: Final = "_other"
"""The value of every label value past the limit (no table or connector is named so)."""


class Bounded:
    """One label's values: those declared known, then the first ``limit`` others seen."""

    def __init__(self, label: str, limit: int) -> None:
        self._label = label
        self._limit = limit
        self._known: frozenset[str] = frozenset()
        self._seen: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()

    def know(self, values: Iterable[str]) -> None:
        """Values that always keep their names (the rules' tables)."""
        with self._lock:
            self._known |= frozenset(values)

    def __call__(self, value: str | None) -> str:
        """``value`` as the label shows it."""
        if value is None:
            return ""
        if value in self._known or value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
            first, self._warned = not self._warned, True
        metrics.LABEL_OVERFLOW.labels(self._label).inc()
        if first:
            log.warning(
                f"more than {self._limit} {self._label} names came from messages: later ones "
                f"show as {OTHER} in metrics (the log lines and dead letters name them)",
                extra={"label": self._label, "value": value},
            )
        return OTHER


TABLES: Final = Bounded("table", 100)
"""Tables named by messages: the rules' tables, and up to 100 others (failures, no_ops)."""
SOURCES: Final = Bounded("source", 32)
"""Connectors (``source.name``) named by messages."""
