"""What ``cdc-cache inspect`` found, as metrics, JSON and text.

Counts by outcome, nines per window, time to consistency and the latest inconsistencies:
the gauges are set once a second, ``GET /inspect`` serves the JSON, ``GET /`` the text.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cdc_cache.core import metrics
from cdc_cache.inspector.consistency import INCONSISTENT, Outcome
from cdc_cache.inspector.nines import WINDOWS, Windows, nines_of
from cdc_cache.inspector.sampling import Skip
from cdc_cache.tools.verify_report import nines

EXAMPLES: Final = 20
TTC_KEPT: Final = 2000


@dataclass
class Report:
    """What the inspector found: counts, windows, latest inconsistencies. Thread-safe."""

    objective: float
    min_checks: int
    checks: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    unresolved: int = 0
    recovered: int = 0
    pending: int = 0
    windows: Windows = field(default_factory=Windows)
    latest: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EXAMPLES))
    ttc: deque[float] = field(default_factory=lambda: deque(maxlen=TTC_KEPT))
    absent: dict[str, dict[str, Any]] = field(default_factory=dict)  # index key → latest
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def judged(self, table: str, outcome: Outcome, now: float) -> None:
        with self._lock:
            self.checks[outcome.value] += 1
            self.windows.add(now, inconsistent=outcome in INCONSISTENT)
        metrics.INSPECT_CHECKS.labels(table, outcome.value).inc()

    def skip(self, reason: Skip) -> None:
        with self._lock:
            self.skipped[reason.value] += 1
        metrics.INSPECT_SKIPPED.labels(reason.value).inc()

    def consistent_after(self, seconds: float, *, recovered: bool) -> None:
        with self._lock:
            self.ttc.append(seconds)
            self.recovered += int(recovered)
        metrics.INSPECT_TIME_TO_CONSISTENCY.observe(seconds)

    def gave_up(self, outcome: Outcome) -> None:
        with self._lock:
            self.unresolved += 1
        metrics.INSPECT_UNRESOLVED.labels(outcome.value).inc()

    def example(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.latest.appendleft(entry)

    def absent_index(self, table: str, key: str, at: str, fields: Sequence[str]) -> None:
        """An index a check found absent (missing, no inconsistency): the latest few, by key.

        ``fields`` says when the worker left it absent until a snapshot rebuilds it.
        """
        entry = {"at": at, "table": table, "key": key, "until_snapshot": bool(fields)}
        with self._lock:
            self.absent.pop(key, None)
            self.absent[key] = entry
            while len(self.absent) > EXAMPLES:
                del self.absent[next(iter(self.absent))]

    def publish(self, now: float, pending: int) -> None:
        """Set the gauges (once a second)."""
        metrics.INSPECT_OBJECTIVE.set(self.objective)
        metrics.INSPECT_PENDING.set(pending)
        with self._lock:
            self.pending = pending
            totals = {name: self.windows.totals(span, now) for name, span in WINDOWS.items()}
        for name, (count, bad) in totals.items():
            metrics.INSPECT_WINDOW_CHECKS.labels(name).set(count)
            metrics.INSPECT_NINES.labels(name).set(nines_of(count, bad, self.min_checks))

    def view(self, now: float) -> dict[str, Any]:
        """The report as JSON-ready data (``GET /inspect``)."""
        with self._lock:
            windows = {}
            for name, span in WINDOWS.items():
                count, bad = self.windows.totals(span, now)
                value = nines_of(count, bad, self.min_checks)
                windows[name] = {
                    "checks": count,
                    "inconsistent": bad,
                    "consistency": nines(count, bad) if count else None,
                    "nines": None if math.isnan(value) else ("inf" if math.isinf(value) else value),
                }
            return {
                "objective_nines": self.objective,
                "windows": windows,
                "checks": {o.value: self.checks[o.value] for o in Outcome},
                "skipped": dict(self.skipped),
                "pending": self.pending,
                "recovered": self.recovered,
                "unresolved": self.unresolved,
                "time_to_consistency_s": _quantiles(self.ttc),
                "latest_inconsistencies": list(self.latest),
                "absent_indexes": list(reversed(self.absent.values())),
            }


def _quantiles(values: Sequence[float]) -> dict[str, float | int | None]:
    ordered = sorted(values)
    if not ordered:
        return {"observations": 0, "p50": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"observations": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)}


def text_page(view: Mapping[str, Any]) -> str:
    """The report for people (``GET /``), as plain text."""
    lines = [f"cdc-cache inspect: objective {view['objective_nines']:g} nines"]
    for name, window in view["windows"].items():
        shown = window["consistency"] or "no checks"
        lines.append(
            f"  {name:<3} {shown:>12}  ({window['checks']} checks, "
            f"{window['inconsistent']} inconsistent)"
        )
    checks = "  ".join(f"{k} {v}" for k, v in view["checks"].items())
    lines.append(f"  checks   {checks}")
    ttc = view["time_to_consistency_s"]
    lines.append(
        f"  time to consistency p50 {ttc['p50']} s, p99 {ttc['p99']} s, max {ttc['max']} s "
        f"({ttc['observations']} samples)"
    )
    lines.append(
        f"  pending {view['pending']}, recovered {view['recovered']}, "
        f"unresolved {view['unresolved']}, skipped {view['skipped'] or 0}"
    )
    lines.append("latest inconsistencies:")
    for entry in view["latest_inconsistencies"]:
        member = "" if entry.get("member") is None else f" member {entry['member']}"
        lines.append(
            f"  {entry['at']}  {entry['kind']:<10} {entry['table']}  {entry['key']}{member}  "
            f"age {entry['age_s']} s  {', '.join(entry['fields'])}"
        )
    absent = view.get("absent_indexes") or []
    if absent:
        lines.append("absent index keys (missing, not stale: readers miss and ask the database):")
    for entry in absent:
        until = "  until `cdc-cache snapshot` rebuilds it" if entry["until_snapshot"] else ""
        lines.append(f"  {entry['at']}  {entry['table']}  {entry['key']}{until}")
    return "\n".join(lines) + "\n"
