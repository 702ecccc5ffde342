"""Which dead letters an operator asks for: filters by id, table, kind and time; listings.

Pure, shared by ``cdc-cache dlq`` and the DLQ page: the newest entry of each id, and the
fields a listing shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdc_cache.dlq.entries import parse_iso_ms


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Which entries to list or replay; empty fields match everything."""

    table: str | None = None
    kind: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    ids: frozenset[str] | None = None

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """True when ``entry`` passes every given condition (time bounds inclusive)."""
        if self.ids is not None and entry.get("id") not in self.ids:
            return False
        if self.table is not None and entry.get("table") != self.table:
            return False
        if self.kind is not None and entry.get("kind") != self.kind:
            return False
        if self.since_ms is None and self.until_ms is None:
            return True
        try:
            at = parse_iso_ms(str(entry.get("failed_at")))
        except ValueError:
            return False
        return (self.since_ms is None or at >= self.since_ms) and (
            self.until_ms is None or at <= self.until_ms
        )


def entry_filter(
    table: str | None = None,
    kind: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> EntryFilter:
    """A filter from user input; times are ISO 8601 (a bad one raises ValueError naming it)."""

    def moment(name: str, text: str | None) -> int | None:
        if text is None or not text.strip():
            return None
        try:
            return parse_iso_ms(text.strip())
        except ValueError as exc:
            msg = f"{name} {text!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
            raise ValueError(msg) from exc

    return EntryFilter(
        table=(table or "").strip() or None,
        kind=(kind or "").strip() or None,
        since_ms=moment("since", since),
        until_ms=moment("until", until),
    )


def latest_by_id(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per id (the last written wins), in order of first appearance."""
    by_id: dict[str, dict[str, Any]] = {}
    for entry in entries:
        by_id[str(entry["id"])] = dict(entry)
    return list(by_id.values())


def summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a listing shows (no message, no stack)."""
    return {
        name: entry.get(name)
        for name in ("id", "kind", "failed_at", "table", "reason", "source", "position", "outcome")
    }
