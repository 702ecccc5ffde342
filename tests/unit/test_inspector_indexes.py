"""The inspector judges index keys (zadd, sadd): a sampled row's membership in each index.

Real Debezium-shaped envelopes of ``shop.products`` through the real decoder and planner;
the table and the indexes are dictionaries (a worker that applies correctly, or not, and
hands that damage an index). The real servers: ``tests/integration/test_inspect_indexes.py``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from cdc_cache.core.events import Row, SourceRecord
from cdc_cache.inspector.consistency import Outcome, implications, judge_members
from cdc_cache.inspector.loop import Inspector
from cdc_cache.inspector.report import text_page
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.rules import KeyRule, TableRules
from cdc_cache.tools.index_judge import Pair, StoredIndex
from cdc_cache.tools.verify_judge import Stored
from tests.unit.test_index_keys import QUIET, TABLE, row
from tests.unit.test_inspector import LIMIT, SETTLE, Clock, Driven, _settings

PRODUCTS = QUIET.tables[TABLE]
TOPIC = "db.shop.products"
CAT5, CAT6, GROUP9 = "category:5:by_price", "category:6:by_price", "group:9:members"


class IndexTruth:
    """The products table and its indexes as dictionaries (the table has no ``set`` key)."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.indexes: dict[str, dict[str, float | None]] = {}
        self.holding: set[str] = set()  # index records the worker left holding members
        self.queries = 0

    def stored(self, keys: Mapping[str, ValueFormat]) -> dict[str, Stored]:
        return {key: Stored(None) for key in keys}

    def row(self, table: TableRules, key: Mapping[str, Any]) -> Row | None:
        self.queries += 1
        return self.rows.get(key["id"])

    def owned(self, table: TableRules, primary_key: Sequence[str], key: str) -> bool:
        raise AssertionError("no set key to look up")

    def memberships(self, pairs: Mapping[Pair, KeyRule]) -> dict[str, StoredIndex]:
        out = {}
        for key in {k for k, _ in pairs}:
            held = self.indexes.get(key, {})
            asked = {m: held[m] for k, m in pairs if k == key and m in held}
            out[key] = StoredIndex(asked, left_holding=key in self.holding, exists=bool(held))
        return out

    def implied(
        self, table: TableRules, primary_key: Sequence[str], rule: KeyRule, pair: Pair
    ) -> bool:
        self.queries += 1
        return any(pair in implications(table, r, primary_key)[1] for r in self.rows.values())

    def apply(self, before: Row | None, after: Row | None, *, remove: bool = True) -> None:
        """What a correct worker writes (``remove=False``: it loses the removals)."""
        if remove:
            for key, member in implications(PRODUCTS, before, ["id"])[1]:
                self.indexes.get(key, {}).pop(member, None)
                if not self.indexes.get(key, True):
                    del self.indexes[key]
        for (key, member), (_, score) in implications(PRODUCTS, after, ["id"])[1].items():
            self.indexes.setdefault(key, {})[member] = None if score is None else float(score)
            self.holding.add(key)


class Run(Driven):
    def __init__(self, **overrides: Any) -> None:
        self.clock = Clock()
        self.truth = IndexTruth()
        self.inspector = Inspector(
            _settings(topics=[TOPIC], **overrides),
            QUIET,
            self.truth,
            clock=self.clock,
            wall_ms=self.clock.wall_ms,
            rng=random.Random(1),
            started_ms=0,
        )
        self.offset = 0
        self.pos = 100

    def change(
        self, before: Row | None, after: Row | None, *, apply: bool = True, remove: bool = True
    ) -> None:
        """A committed change, applied by the worker (or not), read by the inspector."""
        self.pos += 10
        current = after or before
        assert current is not None
        if after is None:
            self.truth.rows.pop(int(current["id"]), None)
        else:
            self.truth.rows[int(after["id"])] = after
        if apply:
            self.truth.apply(before, after, remove=remove)
        op = "c" if before is None else "d" if after is None else "u"
        value = {
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": int(self.clock.wall_ms()),
            "source": {
                "connector": "mysql",
                "name": "db",
                "ts_ms": int(self.clock.wall_ms()),
                "snapshot": "false",
                "db": "shop",
                "table": "products",
                "server_id": 1,
                "file": "mysql-bin.000001",
                "pos": self.pos,
                "row": 0,
            },
        }
        key = orjson.dumps({"id": current["id"]})
        record = SourceRecord(TOPIC, 0, self.offset, key, orjson.dumps(value), None)
        self.offset += 1
        self.inspector.offer(record)


def _checks(run: Run) -> dict[str, int]:
    return {k: v for k, v in run.report["checks"].items() if v}


def test_a_table_with_index_rules_only_is_sampled_and_a_right_index_is_consistent():
    run = Run()
    assert run.inspector.tables == [TABLE]
    run.change(None, row(7, 5, 12.5))
    run.wait(SETTLE + 0.3)
    assert _checks(run) == {"consistent": 1}
    assert run.report["time_to_consistency_s"]["observations"] == 1


def test_a_member_taken_out_by_hand_is_stale_until_it_is_back():
    run = Run()
    run.change(None, row(7, 5, 12.5))
    run.change(None, row(8, 5, 3))
    run.wait(SETTLE + 0.3)
    assert _checks(run) == {"consistent": 2}
    run.change(row(7, 5, 12.5), row(7, 5, 13))
    del run.truth.indexes[CAT5]["7"]  # ZREM behind the worker's back
    run.wait(SETTLE + 0.3)
    assert _checks(run) == {"consistent": 2, "stale": 1}
    (entry,) = run.report["latest_inconsistencies"]
    assert (entry["key"], entry["member"], entry["kind"]) == (CAT5, "7", "stale")
    assert entry["fields"] == ["member"]
    assert f"{CAT5} member 7" in text_page(run.report)
    run.truth.indexes[CAT5]["7"] = 13.0  # a snapshot rebuilt it
    run.wait(2.0)
    assert run.report["recovered"] == 1 and run.inspector.tracker.pending == 0


def test_a_member_scored_otherwise_is_stale_without_showing_the_score():
    run = Run()
    run.change(None, row(7, 5, 12.5))
    run.truth.indexes[CAT5]["7"] = 4.0
    run.wait(SETTLE + 0.3)
    assert _checks(run) == {"stale": 1}
    (entry,) = run.report["latest_inconsistencies"]
    assert entry["fields"] == ["score"] and "12.5" not in orjson.dumps(entry).decode()


def test_a_damaged_index_that_outlives_the_recheck_limit_is_unresolved():
    run = Run()
    run.change(None, row(7, 5, 12.5))
    run.truth.indexes[GROUP9].clear()
    run.truth.indexes[GROUP9]["8"] = None  # the index exists, the row's member is gone
    run.wait(SETTLE + LIMIT + 6)
    assert _checks(run) == {"stale": 1} and run.report["unresolved"] == 1


def test_a_member_left_in_the_index_the_row_moved_out_of_is_unexpected_after_a_settle():
    run = Run()
    run.change(None, row(7, 5, 12.5))
    run.wait(SETTLE + 0.3)
    run.change(row(7, 5, 12.5), row(7, 6, 12.5), remove=False)  # the removal was lost
    run.wait(SETTLE + 0.3)
    assert _checks(run) == {"consistent": 1}, "judged before another change could fix it"
    run.wait(SETTLE)
    assert _checks(run) == {"consistent": 1, "unexpected": 1}
    (entry,) = run.report["latest_inconsistencies"]
    assert (entry["key"], entry["member"]) == (CAT5, "7")


def test_a_deleted_rows_member_still_indexed_is_unexpected():
    run = Run()
    run.change(None, row(7, 5, 12.5))
    run.change(None, row(8, 5, 3))
    run.wait(SETTLE + 0.3)
    run.change(row(7, 5, 12.5), None, apply=False)
    run.wait(2 * SETTLE + 0.5)
    assert run.report["checks"]["unexpected"] == 1
    members = {(e["key"], e["member"]) for e in run.report["latest_inconsistencies"]}
    assert members == {(CAT5, "7"), (GROUP9, "7")}


def test_a_member_another_row_implies_is_no_stray():
    """A member template that two rows render alike: the stray is looked up, and kept."""
    run = Run()
    run.change(None, row(7, 5, 12.5))
    run.wait(SETTLE + 0.3)
    run.change(row(7, 5, 12.5), row(7, 6, 12.5), remove=False)
    queries = run.truth.queries
    run.truth.implied = lambda *args: args[-1] == (CAT5, "7")  # type: ignore[method-assign]
    run.wait(2 * SETTLE + 0.5)
    assert _checks(run) == {"consistent": 2}
    assert run.truth.queries > queries


def test_an_absent_index_is_missing_not_stale_also_when_only_a_snapshot_rebuilds_it():
    run = Run()
    run.change(None, row(7, 5, 12.5))
    del run.truth.indexes[CAT5]  # expired, evicted, or deleted: the record still holds "1"
    run.wait(SETTLE + 0.3)
    assert _checks(run) == {"missing": 1}
    assert run.report["windows"]["5m"]["inconsistent"] == 0
    assert run.report["latest_inconsistencies"] == []
    (absent,) = run.report["absent_indexes"]
    assert (absent["key"], absent["until_snapshot"]) == (CAT5, True)
    assert f"{CAT5}  until `cdc-cache snapshot` rebuilds it" in text_page(run.report)
    run.truth.holding.discard(GROUP9)
    del run.truth.indexes[GROUP9]  # expired, and the worker had emptied it: no snapshot needed
    run.change(None, row(8, 5, 3), apply=False)
    run.wait(SETTLE + 0.3)
    assert [(e["key"], e["until_snapshot"]) for e in run.report["absent_indexes"]] == [
        (GROUP9, False),
        (CAT5, True),
    ]


def test_a_change_never_applied_to_an_existing_index_is_stale():
    run = Run()
    run.change(None, row(8, 5, 3))
    run.change(None, row(7, 5, 12.5), apply=False)
    run.wait(SETTLE + 0.3)
    assert _checks(run) == {"consistent": 1, "stale": 1}


# -- the pure judge ----------------------------------------------------------------------


def test_judge_members_reads_only_the_rows_members_of_each_index():
    implied = implications(PRODUCTS, row(7, 5, 12.5), ["id"])[1]
    right = {
        CAT5: StoredIndex({"7": 12.5}, exists=True),
        GROUP9: StoredIndex({"7": None}, exists=True),
    }
    assert judge_members(implied, right) == []
    other = {CAT5: StoredIndex({}, exists=True), GROUP9: StoredIndex({"7": None}, exists=True)}
    (absent,) = judge_members(implied, other)
    assert (absent.key, absent.member, absent.outcome, absent.fields) == (
        CAT5, "7", Outcome.STALE, ("member",)
    )  # fmt: skip
    gone = {CAT5: StoredIndex({}, left_holding=True, exists=False), GROUP9: right[GROUP9]}
    (missing,) = judge_members(implied, gone)
    assert missing.outcome is Outcome.MISSING and missing.member is None
    assert missing.fields == ("(absent until cdc-cache snapshot)",)
    left = {CAT6: StoredIndex({"7": 12.5}, exists=True), **right}
    (stray,) = judge_members(implied, left)
    assert (stray.key, stray.member, stray.outcome) == (CAT6, "7", Outcome.UNEXPECTED)
    wrong = {CAT6: StoredIndex({}, wrong_type=True), **right}
    assert judge_members(implied, wrong) == [], "an index the row left is not the row's"


def test_a_row_the_rules_cannot_render_is_skipped_as_unrenderable_not_judged():
    """A NULL score: the worker dead-letters the row's changes (``render_failed``).

    Such a row implies no member: judged, it would be consistent, and the members it had
    strays. Neither the row the check reads nor the sampled change's image is judged.
    """
    run = Run()
    run.change(None, row(8, 5, 3))  # applied: its members are in the indexes
    unpriced = {**row(8, 5), "price": None}
    run.change(row(8, 5, 3), unpriced, apply=False)  # followed; the members stay
    run.wait(2 * SETTLE + 0.5)
    assert _checks(run) == {} and run.report["skipped"] == {"unrenderable": 1}
    assert run.inspector.tracker.pending == 0
    run.change({**unpriced, "name": "a"}, {**unpriced, "name": "b"}, apply=False)  # no ops
    run.wait(SETTLE + 0.5)
    assert _checks(run) == {} and run.report["skipped"] == {"unrenderable": 2}
    assert run.report["latest_inconsistencies"] == []
    assert run.inspector.tracker.pending == 0
