"""``cdc-cache trace``'s output: the trace for a terminal, or as JSON (``--json``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cdc_cache.tools.trace import ChangeTrace, Trace


def as_json(trace: Trace) -> dict[str, Any]:
    """The trace as plain JSON data (``--json``)."""
    return {
        "table": trace.table,
        "key": dict(trace.key),
        "topics": list(trace.topics),
        "scanned": trace.scanned,
        "pending": trace.pending,
        "changes": [_change_json(c) for c in trace.changes],
        "keys": [
            {
                "key": k.state.key,
                "type": k.state.kind,
                "value": k.state.value,
                "ttl_ms": k.state.ttl_ms,
                "version": k.state.version,
                "holds": _where(k.holds) if k.holds else None,
            }
            for k in trace.keys
        ],
    }


def _change_json(change: ChangeTrace) -> dict[str, Any]:
    return {
        "topic": change.topic,
        "partition": change.partition,
        "offset": change.offset,
        "op": change.op,
        "position": change.position,
        "committed_at": _iso(change.committed_at_ms),
        "error": change.error,
        "ops": [
            {"action": o.action, "target": o.target, "gate": o.gate, "ttl_ms": o.ttl_ms}
            for o in change.ops
        ],
    }


def _where(change: ChangeTrace) -> str:
    return f"{change.topic}[{change.partition}]@{change.offset}"


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _ttl(ms: int | None) -> str:
    if ms is None:
        return "absent"
    return "no TTL" if ms < 0 else f"TTL {ms / 1000:g} s"


def format_text(trace: Trace) -> str:
    """The trace for a terminal: changes, their ops and verdicts, then the keys now."""
    row = ", ".join(f"{c}={v}" for c, v in trace.key.items())
    count = len(trace.changes)
    lines = [
        f"{trace.table} {row}: {count} change{'' if count == 1 else 's'} on "
        f"{', '.join(trace.topics) or 'no topic'} ({trace.scanned} records read)"
    ]
    for change in trace.changes:
        lines.append(
            f"  {_where(change)}  {change.op or '?'}  {change.position or '-'}  "
            f"{_iso(change.committed_at_ms) or ''}".rstrip()
        )
        if change.error:
            lines.append(f"      dead-lettered: {change.error}")
        lines.extend(f"      {o.action:<17} {o.target}  {o.gate or '-'}" for o in change.ops)
        if not change.ops and not change.error:
            lines.append("      no cache operation (no watched column changed)")
    lines.append("keys now:")
    for k in trace.keys:
        state = k.state
        held = f"holds {_where(k.holds)}" if k.holds else f"version {state.version or 'none'}"
        lines.append(f"  {state.key}  {state.kind}  {_ttl(state.ttl_ms)}  {held}")
        if state.value is not None:
            lines.append(f"      {state.value}")
    if not trace.keys:
        lines.append("  (no key: the rules plan nothing for these changes)")
    if trace.pending:
        lines.append(
            f"{trace.pending} operation(s) newer than their key's version: not in the cache "
            "(the worker is behind, or their writes were lost)"
        )
    return "\n".join(lines)
