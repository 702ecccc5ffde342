"""The writer's accounting of a batch: per-change outcomes and the outcome metrics.

The writer counts a batch's labels once per batch and summarises a change of one op
through a lookup; these tests hold both to what counting change by change and op by op,
with the general rule for a change's outcome, gives. An op is counted by the kind it was
sent to Redis as: a set whose row expired before its batch was applied is a delete. An index
member op that came back invalidated (its index left absent until a snapshot) is counted
under its table too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.positions import SourcePosition
from cdc_cache.core.retry import Backoff
from cdc_cache.plan.cache_ops import (
    CacheOp,
    DeleteKey,
    IndexMember,
    InvalidatePrefix,
    Notify,
    SetRow,
    ValueFormat,
)
from cdc_cache.plan.route import Planned
from cdc_cache.sink.apply import ApplyResult
from cdc_cache.sink.encoding import Outcome
from cdc_cache.sink.writer import CacheWriter

AT = SourcePosition(0, 1, 4, 0)
NOW_MS = 1_800_000_000_000
KINDS = {
    "set": SetRow("k", AT, b"{}", ValueFormat.JSON, 1000, 1000),
    "delete": DeleteKey("k", AT, 1000),
    "index": IndexMember("i", "m", "1", True, AT, 1000, 1000),
    "invalidate_prefix": InvalidatePrefix("p:", "t", AT, 1000),
    "notify": Notify("c", b"{}", 10),
    # rows with an expiry time (``ttl: {until: ...}``): passed, or still ahead
    "set_expired": SetRow("k", AT, b"{}", ValueFormat.JSON, 1000, 1000, expires_at_ms=NOW_MS - 1),
    "set_expiring": SetRow("k", AT, b"{}", ValueFormat.JSON, 1000, 1000, expires_at_ms=NOW_MS + 1),
}
PLAIN = ("set", "delete", "index", "invalidate_prefix", "notify")
# the kind each op is sent to Redis as, and counted by
SENT_AS = {kind: kind for kind in KINDS} | {"set_expired": "delete", "set_expiring": "set"}
OUTCOMES = list(Outcome)
TABLES = ("db.a", "db.b")


class ScriptedApplier:
    """Answers each key op with the outcome the test chose for it, in order."""

    def __init__(self, outcomes: Sequence[Outcome]) -> None:
        self.outcomes = outcomes
        self.sent: list[CacheOp] = []

    def apply(self, ops: Sequence[CacheOp]) -> ApplyResult:
        self.sent += ops
        prefixes = sum(isinstance(op, InvalidatePrefix) for op in ops)
        assert len(ops) - prefixes == len(self.outcomes)
        return ApplyResult(tuple(self.outcomes), (0,) * prefixes)


def general_summary(outcomes: list[Outcome]) -> str:
    """A change's outcome as the metrics define it, for any number of ops."""
    if not outcomes:
        return "no_op"
    if any(o in (Outcome.APPLIED, Outcome.INVALIDATED) for o in outcomes):
        return "applied"
    return "duplicate" if all(o is Outcome.DUPLICATE for o in outcomes) else "stale"


@st.composite
def changes(draw: st.DrawFn, expiring: bool = True) -> tuple[Planned, list[tuple[str, Outcome]]]:
    """A planned change and, per op, its kind and the outcome Redis gives it (rows with an
    expiry time only where the rules give them one: ``expiring``)."""
    kinds = draw(
        st.lists(st.sampled_from([k for k in sorted(KINDS) if expiring or k in PLAIN]), max_size=3)
    )
    table = draw(st.sampled_from(TABLES))
    ops = [replace(KINDS[kind], table=table) if kind == "index" else KINDS[kind] for kind in kinds]
    outcomes = [
        (kind, Outcome.APPLIED if kind == "invalidate_prefix" else draw(st.sampled_from(OUTCOMES)))
        for kind in kinds
    ]
    committed = draw(st.none() | st.integers(NOW_MS - 5_000, NOW_MS + 5_000))
    event = ChangeEvent(
        table,
        draw(st.sampled_from([Op.CREATE, Op.UPDATE, Op.DELETE])),
        None,
        {"id": 1},
        {"id": 1},
        AT,
        committed,
        draw(st.none() | st.integers(NOW_MS - 5_000, NOW_MS)),
    )
    return Planned(SourceRecord("t", 0, 0, None, None), event, tuple(ops)), outcomes


def snapshot() -> dict[str, Any]:
    """The writer's counters as they stand (one collection of the registry)."""
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((f"cdc_cache_{name}", tuple(sorted(labels.items()))), 0.0)

    tables, ops = TABLES, (Op.CREATE, Op.UPDATE, Op.DELETE)
    summaries = ("applied", "stale", "duplicate", "no_op")
    return {
        "ops": {
            (k, o.value): value("redis_ops_total", kind=k, outcome=o.value)
            for k in set(SENT_AS.values())
            for o in OUTCOMES
        },
        "events": {
            (t, str(op), s): value("events_total", table=t, op=str(op), outcome=s)
            for t in tables
            for op in ops
            for s in summaries
        },
        "absent_indexes": {t: value("absent_index_ops_total", table=t) for t in tables},
        "changes": value("records_total", kind="change"),
        "committed": value("commit_to_applied_seconds_count"),
        "emitted": value("emitted_to_applied_seconds_count"),
    }


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {
        name: (
            {k: v - before[name][k] for k, v in value.items() if v != before[name][k]}
            if isinstance(value, dict)
            else value - before[name]
        )
        for name, value in after.items()
    }


@settings(max_examples=60, deadline=None)
@given(st.data(), st.booleans())
def test_a_batch_is_counted_as_change_by_change_and_op_by_op(
    data: st.DataObject, expiring: bool
) -> None:
    batch = data.draw(st.lists(changes(expiring), max_size=12))
    key_outcomes = [o for _, ops in batch for kind, o in ops if kind != "invalidate_prefix"]
    applier = ScriptedApplier(key_outcomes)
    writer = CacheWriter(applier, Backoff(), clock_ms=lambda: NOW_MS, expiring=expiring)  # type: ignore[arg-type]
    before = snapshot()
    report = writer.write([planned for planned, _ in batch])
    counted = delta(snapshot(), before)
    assert [SENT_AS[kind] for _, ops in batch for kind, _ in ops] == [
        kind_of(op) for op in applier.sent
    ]

    summaries = [general_summary([o for _, o in ops]) for _, ops in batch]
    assert [(r.event, r.outcome) for r in report] == [
        (planned.event, s) for (planned, _), s in zip(batch, summaries, strict=True)
    ]
    op_counts = Counter((SENT_AS[kind], o.value) for _, ops in batch for kind, o in ops)
    event_counts = Counter(
        (p.event.table, str(p.event.op), s) for (p, _), s in zip(batch, summaries, strict=True)
    )
    absent_indexes = Counter(
        p.event.table
        for p, ops in batch
        for kind, o in ops
        if kind == "index" and o is Outcome.INVALIDATED
    )
    applied = [p.event for (p, _), s in zip(batch, summaries, strict=True) if s == "applied"]
    assert counted == {
        "ops": dict(op_counts),
        "events": dict(event_counts),
        "absent_indexes": dict(absent_indexes),
        "changes": len(batch),
        "committed": sum(e.committed_at_ms is not None for e in applied),
        "emitted": sum(e.emitted_at_ms is not None for e in applied),
    }


@given(st.sampled_from(sorted(KINDS)), st.sampled_from(OUTCOMES))
def test_a_change_of_one_op_has_the_outcome_the_general_rule_gives(
    kind: str, outcome: Outcome
) -> None:
    """The writer's lookup for one-op changes agrees with the rule for any number of ops."""
    sent = Outcome.APPLIED if kind == "invalidate_prefix" else outcome
    event = ChangeEvent("db.a", Op.UPDATE, None, {}, {"id": 1}, AT, None)
    planned = Planned(SourceRecord("t", 0, 0, None, None), event, (KINDS[kind],))
    applier = ScriptedApplier([] if kind == "invalidate_prefix" else [sent])
    (report,) = CacheWriter(applier, Backoff()).write([planned])  # type: ignore[arg-type]
    assert report.outcome == general_summary([sent])


def kind_of(op: CacheOp) -> str:
    return {SetRow: "set", DeleteKey: "delete", IndexMember: "index", Notify: "notify"}.get(
        type(op), "invalidate_prefix"
    )


def test_a_set_whose_row_expired_is_counted_as_the_delete_it_was_sent_as() -> None:
    event = ChangeEvent("db.a", Op.UPDATE, None, {}, {"id": 1}, AT, None)
    planned = Planned(SourceRecord("t", 0, 0, None, None), event, (KINDS["set_expired"],))
    applier = ScriptedApplier([Outcome.APPLIED])
    writer = CacheWriter(applier, Backoff(), clock_ms=lambda: NOW_MS, expiring=True)  # type: ignore[arg-type]
    before = snapshot()
    (report,) = writer.write([planned])
    assert [type(op) for op in applier.sent] == [DeleteKey]
    assert report.outcome == "applied"
    assert delta(snapshot(), before)["ops"] == {("delete", "applied"): 1}


@pytest.mark.parametrize("expiring", [False, True])
def test_an_index_op_that_came_back_invalidated_is_counted_under_its_table(
    expiring: bool,
) -> None:
    """The table whose snapshot rebuilds the index, among ops of other kinds and outcomes."""

    def change(table: str, *kinds: str) -> Planned:
        event = ChangeEvent(table, Op.UPDATE, None, {}, {"id": 1}, AT, None)
        ops = [replace(KINDS[k], table=table) if k != "notify" else KINDS[k] for k in kinds]
        return Planned(SourceRecord("t", 0, 0, None, None), event, tuple(ops))

    inv, app, stale, dup = Outcome.INVALIDATED, Outcome.APPLIED, Outcome.STALE, Outcome.DUPLICATE
    batch_outcomes = [
        (change("db.a", "set_expired" if expiring else "set", "index", "notify"), [inv, app, app]),
        (change("db.b", "index"), [inv]),
        (change("db.a", "invalidate_prefix", "index"), [inv]),  # no outcome for a prefix
        (change("db.b", "set", "delete", "index"), [inv, inv, stale]),
        (change("db.a", "index", "index"), [dup, inv]),
    ]
    applier = ScriptedApplier([o for _, outcomes in batch_outcomes for o in outcomes])
    writer = CacheWriter(applier, Backoff(), clock_ms=lambda: NOW_MS, expiring=expiring)  # type: ignore[arg-type]
    before = snapshot()
    writer.write([planned for planned, _ in batch_outcomes])
    counted = delta(snapshot(), before)
    assert counted["absent_indexes"] == {"db.a": 2, "db.b": 1}
    assert counted["ops"][("index", "invalidated")] == 3


def test_a_batch_without_an_index_op_invalidated_counts_no_table() -> None:
    """Index ops applied, stale or duplicate, and other kinds invalidated: no table named."""
    event = ChangeEvent("db.a", Op.UPDATE, None, {}, {"id": 1}, AT, None)
    ops = (replace(KINDS["index"], table="db.a"), KINDS["set"], KINDS["delete"])
    batch = [Planned(SourceRecord("t", 0, n, None, None), event, ops) for n in range(3)]
    inv, app, stale, dup = Outcome.INVALIDATED, Outcome.APPLIED, Outcome.STALE, Outcome.DUPLICATE
    applier = ScriptedApplier([app, inv, inv, stale, inv, inv, dup, inv, inv])
    before = snapshot()
    CacheWriter(applier, Backoff()).write(batch)  # type: ignore[arg-type]
    assert delta(snapshot(), before)["absent_indexes"] == {}


def stays(le: str | None = None) -> float:
    """The worker's own-time histogram: its count, or one cumulative bucket."""
    name = "cdc_cache_received_to_applied_seconds"
    if le is None:
        return REGISTRY.get_sample_value(f"{name}_count") or 0.0
    return REGISTRY.get_sample_value(f"{name}_bucket", {"le": le}) or 0.0


def test_each_change_is_timed_from_its_records_arrival_to_redis_answering_it() -> None:
    """The worker's own share of the latency, whatever the outcome: received_s → answered."""
    event = ChangeEvent("db.a", Op.UPDATE, None, {}, {"id": 1}, AT, None)
    received = [
        Planned(SourceRecord("t", 0, n, None, None, None, 100.0), event, (KINDS["set"],))
        for n in range(3)
    ]
    replayed = Planned(SourceRecord("t", 0, 3, None, None), event, (KINDS["set"],))  # no source
    applier = ScriptedApplier([Outcome.APPLIED, Outcome.STALE, Outcome.DUPLICATE, Outcome.APPLIED])
    writer = CacheWriter(applier, Backoff(), monotonic=lambda: 100.25)  # type: ignore[arg-type]
    before = {le: stays(le) for le in (None, "0.2", "0.25")}
    writer.write([*received, replayed])
    assert stays() == before[None] + 3  # the replayed record names no arrival
    assert stays("0.2") == before["0.2"]
    assert stays("0.25") == before["0.25"] + 3  # 0.25 s each
