"""The per-table fallback controller: pure decisions, and the process-level holds it raises."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, SourceRecord
from cdc_cache.dlq.entries import Failure
from cdc_cache.mode.controller import Cause, Hold
from cdc_cache.mode.holds import Holds
from cdc_cache.mode.tables import (
    DELETES_HIDDEN,
    TableConfig,
    TableFallback,
    TableSignal,
    TableState,
    deletes_seen,
    step,
    with_deletes,
    with_schema,
)
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules

CONFIG = TableConfig(failures=3, window_s=10)
S = 1000  # ms


def run(batches: list[tuple[int, int, int]], state: TableState | None = None) -> TableState:
    """Feed (second, failed, applied) batches to the controller."""
    state = state or TableState()
    for second, failed, applied in batches:
        state = step(state, TableSignal(second * S, failed, applied, "render_failed"), CONFIG)
    return state


def test_a_table_falls_back_once_enough_changes_failed_within_the_window():
    assert not run([(0, 1, 0), (1, 1, 0)]).failing
    state = run([(0, 1, 0), (1, 1, 0), (2, 1, 0)])
    assert state.failing
    assert state.reason.startswith("3 changes failed within 10s (last: render_failed)")


def test_failures_spread_wider_than_the_window_do_not_make_it_fall_back():
    assert not run([(0, 1, 0), (6, 1, 0), (12, 1, 0), (18, 1, 0), (24, 1, 0)]).failing


def test_one_batch_with_many_failures_is_enough():
    assert run([(0, 50, 3)]).failing


def test_it_returns_after_a_quiet_window_and_a_batch_that_applied():
    failing = run([(0, 3, 0)])
    assert run([(5, 0, 10)], failing).failing, "failures within the window: stay"
    assert run([(11, 0, 0)], failing).failing, "quiet, but nothing applied yet: stay"
    assert not run([(11, 0, 1)], failing).failing
    assert not run([(5, 0, 1), (11, 0, 0)], failing).failing


def test_a_batch_that_both_failed_and_applied_does_not_count_as_recovered():
    failing = run([(0, 3, 0), (5, 1, 1)])
    assert run([(11, 0, 0)], failing).failing
    assert run([(16, 0, 0)], failing).failing


def test_a_schema_problem_makes_it_fall_back_at_once_until_the_columns_fit_again():
    state = with_schema(TableState(), "rules use column 'price' (rules.yaml:7)", 0, CONFIG)
    assert state.failing and state.reason == "rules use column 'price' (rules.yaml:7)"
    assert run([(30, 0, 5)], state).failing, "changes applying do not hide a schema problem"
    fits = with_schema(state, None, 31 * S, CONFIG)
    assert not fits.failing, "no failure was seen: back at once"

    with_failures = run([(30, 3, 0)], state)
    fits = with_schema(with_failures, None, 31 * S, CONFIG)
    assert fits.failing and "fit the rules again" in fits.reason
    assert not run([(41, 0, 1)], fits).failing


batches = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40
)


@given(batches)
def test_it_never_falls_back_without_enough_recent_failures_and_never_returns_while_failing(
    seq: list[tuple[int, int, int]],
):
    """Whatever the batches, the decision matches the counting definition."""
    state, now, times = TableState(), 0, []
    for gap, failed, applied in seq:
        now += gap
        before = state
        state = step(state, TableSignal(now * S, failed, applied, "k"), CONFIG)
        times += [now] * failed
        recent = [t for t in times if now - t < CONFIG.window_s]
        if len(recent) >= CONFIG.failures:
            assert state.failing
        if not before.failing:
            assert state.failing == (len(recent) >= CONFIG.failures)
        elif not state.failing:
            assert not recent and failed == 0


def failure(table: str) -> Failure:
    record = SourceRecord(f"dbserver1.{table}", 0, 1, None, b"{}")
    return Failure(RenderError("column 'price' is absent", record), table)


def test_the_process_controller_raises_and_clears_the_tables_hold():
    clock = [0.0]
    holds = Holds()
    tables = TableFallback(["db.items", "db.stock"], holds, 5_000, CONFIG, lambda: clock[0])
    tables.observe({"db.stock": 4}, [failure("db.items")] * 3 + [failure("db.other")] * 9)

    (hold,) = holds.active()
    assert hold.cause is Cause.TABLE_FAILING and hold.scope == "db.items"
    assert hold.label == "table_failing:db.items"
    assert tables.caps() == {"db.items": 5_000}
    assert tables.state("db.other") is None, "tables the rules do not cover are ignored"

    clock[0] = 11.0
    tables.observe({"db.items": 1}, [])
    assert holds.active() == ()
    assert tables.caps() == {}


def test_tables_falling_back_in_other_processes_are_capped_here_too():
    tables = TableFallback(["db.items"], Holds(), 5_000, CONFIG)
    tables.set_effective(["db.items", "db.stock"])
    assert tables.caps() == {"db.items": 5_000, "db.stock": 5_000}
    tables.set_effective([])
    assert tables.caps() == {}


def test_a_schema_problem_raises_the_hold_with_its_reason():
    holds = Holds()
    tables = TableFallback(["db.items"], holds, 5_000, CONFIG)
    tables.schema("db.items", "column 'price' is gone (rules.yaml:7)")
    assert holds.active() == (
        Hold(Cause.TABLE_FAILING, "column 'price' is gone (rules.yaml:7)", "db.items"),
    )
    tables.schema("db.items", None)
    assert holds.active() == ()


def test_config_is_validated():
    with pytest.raises(ValueError, match="at least 1 failure"):
        TableConfig(failures=0)


def test_a_tables_hold_travels_from_a_follower_to_the_leader_with_its_table():
    from cdc_cache.fallback.store import LagSummary

    holds = Holds()
    holds.hold(Cause.TABLE_FAILING, "db.items", "3 changes failed")
    holds.hold(Cause.REDIS_OOM, "node-a", "OOM")
    follower = LagSummary(1.0, False, "t[0]", holds.active())
    wire = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in follower.fields().items()}
    parsed = LagSummary.parse(wire)
    assert parsed == follower
    assert Hold(Cause.TABLE_FAILING, "3 changes failed", "db.items") in parsed.holds


def test_a_table_hold_without_its_table_holds_everything_rather_than_nothing():
    from cdc_cache.fallback.store import LagSummary

    parsed = LagSummary.parse(
        {"lag_s": "", "stalled": "0", "where": "", "holds": '[["table_failing", "x"]]'}
    )
    assert parsed is not None and [h.cause for h in parsed.holds] == [Cause.LINEAGE]


def test_a_record_hiding_deletes_falls_back_at_once_and_returns_a_window_after_the_last():
    hidden = with_deletes(TableState(), True, 0, CONFIG)
    assert hidden.failing and hidden.reason == DELETES_HIDDEN
    assert "delete.tombstone.handling.mode=rewrite" in hidden.reason
    assert run([(30, 0, 5)], hidden).failing, "changes applying do not show its deletes"
    behind = with_deletes(hidden, True, 8 * S, CONFIG)  # a partition read behind the others
    assert with_deletes(behind, False, 12 * S, CONFIG).failing, "within the window: stay"
    back = with_deletes(behind, False, 18 * S, CONFIG)
    assert not back.failing and back.deletes_hidden_ms is None
    quiet = with_deletes(hidden, False, 5 * S, CONFIG)
    assert quiet.failing, "the window has not passed"
    assert run([(60, 0, 5)], quiet).failing, "a quiet table stays: nothing shows its deletes"
    assert with_deletes(TableState(), False, 0, CONFIG) == TableState()


def test_hidden_deletes_rank_after_a_schema_problem_and_before_failures():
    hidden = with_deletes(TableState(), True, 0, CONFIG)
    both = with_schema(hidden, "column 'price' is gone", 1 * S, CONFIG)
    assert both.reason == "column 'price' is gone"
    assert with_schema(both, None, 2 * S, CONFIG).reason == DELETES_HIDDEN
    failed = run([(1, 3, 0)], hidden)
    shown = with_deletes(failed, False, 11 * S, CONFIG)
    assert shown.failing, "its failures are recent"
    assert shown.reason == "its deletes reach the worker again; back once its changes apply"
    assert not run([(12, 0, 1)], shown).failing


def test_the_process_controller_holds_a_table_whose_records_hide_its_deletes(caplog):
    clock = [0.0]
    holds = Holds()
    tables = TableFallback(["db.items", "db.stock"], holds, 5_000, CONFIG, lambda: clock[0])
    with caplog.at_level(logging.ERROR, "cdc_cache.mode"):
        tables.deletes({"db.items": True, "db.stock": False, "db.other": True})
    assert holds.active() == (Hold(Cause.TABLE_FAILING, DELETES_HIDDEN, "db.items"),)
    assert tables.caps() == {"db.items": 5_000}
    assert hidden_gauge("db.items") == 1 and hidden_gauge("db.other") is None
    (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert getattr(line, "table", None) == "db.items"
    assert "delete.tombstone.handling.mode=rewrite" in getattr(line, "fix", "")

    clock[0] = 5.0
    tables.deletes({"db.items": False})
    assert tables.caps() == {"db.items": 5_000}, "within the window of the last hidden one"
    clock[0] = 11.0
    tables.deletes({"db.stock": False})
    assert tables.caps() == {"db.items": 5_000}, "returns only on a record of its own"
    tables.deletes({"db.items": False})
    assert holds.active() == () and tables.caps() == {}
    assert hidden_gauge("db.items") == 0


def hidden_gauge(table: str) -> float | None:
    return REGISTRY.get_sample_value("cdc_cache_deletes_hidden", {"table": table})


FLAT = Path(__file__).parents[1] / "fixtures" / "debezium" / "mariadb" / "flat.jsonl"
RULES = parse_rules(
    """
tables:
  inventory.stock:
    keys: [{key: "stock:{sku_id}:{warehouse}"}]
  inventory.products:
    keys: [{key: "product:{id}"}]
"""
)


def test_a_batch_shows_which_tables_hide_their_deletes():
    """Recorded flattened records (rewrite mode), one stock update without ``__deleted``;
    tombstones, heartbeats and schema changes say nothing either way."""
    records = []
    for offset, line in enumerate(FLAT.read_text().splitlines()):
        doc = orjson.loads(line)
        value = None if doc["value"] is None else doc["value"].encode()
        records.append(SourceRecord(doc["topic"], 0, offset, doc["key"].encode(), value))
    batch = [route(record, RULES) for record in records]
    assert deletes_seen(batch) == {"inventory.stock": False, "inventory.products": False}
    index, item = next(
        (i, b)
        for i, b in enumerate(batch)
        if isinstance(b, Planned) and b.event.table == "inventory.stock"
    )
    event: ChangeEvent = replace(item.event, deletes_hidden=True)
    batch[index] = replace(item, event=event)
    assert deletes_seen(batch) == {"inventory.stock": True, "inventory.products": False}
    assert deletes_seen(batch[:index]) == {"inventory.products": False}
