"""``cdc-cache trace``'s output: the trace for a terminal, or as JSON (``--json``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cdc_cache.tools.trace import ChangeTrace, MemberTrace, OpTrace, Trace


def as_json(trace: Trace) -> dict[str, Any]:
    """The trace as plain JSON data (``--json``)."""
    return {
        "table": trace.table,
        "key": dict(trace.key),
        "topics": list(trace.topics),
        "scanned": trace.scanned,
        "pending": trace.pending,
        "damaged": trace.damaged,
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
        "members": [
            {
                "key": m.key,
                "member": m.member,
                "type": m.kind.value,
                "present": m.present,
                "score": m.score,
                "index": _index_state(m),
                "version": m.version,
                "holds": _where(m.holds) if m.holds else None,
                "differs": m.differs,
            }
            for m in trace.members
        ],
    }


def _index_state(member: MemberTrace) -> str:
    """The index key as a whole: exists, absent (until a snapshot), or of another type."""
    index = member.index
    if index.wrong_type:
        return "wrong_type"
    if not index.absent:
        return "exists"
    return "absent_until_snapshot" if index.left_holding else "absent"


def _membership(member: MemberTrace) -> str:
    state = _index_state(member)
    if state == "absent_until_snapshot":
        return "index absent until `cdc-cache snapshot` rebuilds it"
    if state != "exists":
        return "index absent" if state == "absent" else "index holds another type"
    if not member.present:
        return "absent"
    return "present" if member.score is None else f"present, score {member.score:g}"


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
            {
                "action": o.action,
                "target": o.target,
                "gate": o.gate,
                "ttl_ms": o.ttl_ms,
                **({"member": o.member, "score": o.score} if o.member is not None else {}),
            }
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
        lines.extend(f"      {o.action:<17} {_target(o)}  {o.gate or '-'}" for o in change.ops)
        if not change.ops and not change.error:
            lines.append("      no cache operation (no watched column changed)")
    if trace.keys or not trace.members:
        lines.append("keys now:")
    for k in trace.keys:
        state = k.state
        held = f"holds {_where(k.holds)}" if k.holds else f"version {state.version or 'none'}"
        lines.append(f"  {state.key}  {state.kind}  {_ttl(state.ttl_ms)}  {held}")
        if state.value is not None:
            lines.append(f"      {state.value}")
    if not trace.keys and not trace.members:
        lines.append("  (no key: the rules plan nothing for these changes)")
    if trace.members:
        lines.append("index memberships now:")
    for m in trace.members:
        held = f"holds {_where(m.holds)}" if m.holds else f"version {m.version or 'none'}"
        lines.append(f"  {m.key} member {m.member}  {_membership(m)}  {held}")
        if m.differs and m.wrote is not None:
            wrote = "added it" if m.wrote.present else "took it out"
            score = f" with score {m.wrote.score}" if m.wrote.present and m.wrote.score else ""
            lines.append(
                f"      differs: that change {wrote}{score} (changed behind the worker's back)"
            )
    if trace.pending:
        lines.append(
            f"{trace.pending} operation(s) newer than their key's version: not in the cache "
            "(the worker is behind, or their writes were lost)"
        )
    if trace.damaged:
        lines.append(
            f"{trace.damaged} index membership(s) differ from the change their version names "
            "(`cdc-cache snapshot` of the table rebuilds the index)"
        )
    return "\n".join(lines)


def _target(op: OpTrace) -> str:
    if op.member is None:
        return op.target
    return f"{op.target} member {op.member}" + (f" score {op.score}" if op.score else "")
