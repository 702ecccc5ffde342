"""The inspector's loop on a fake clock, a fake cache and a fake table: what it samples,
when it checks, how it judges, what it reports, and what it does while a server is down.

The changes are real Debezium envelopes (``tests.workload``) through the real decoder and
planner; only Redis and the database are dictionaries here (the real ones are exercised by
``tests/integration/test_faults.py`` and the end-to-end tests).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import exceptions as rex

from cdc_cache.core import metrics
from cdc_cache.core.events import Row, SourceRecord
from cdc_cache.inspector.check import Deferred, Judged, check
from cdc_cache.inspector.consistency import Outcome, implications
from cdc_cache.inspector.loop import Inspector
from cdc_cache.inspector.report import text_page
from cdc_cache.inspector.settings import InspectSettings
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.rules import TableRules
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.tools.verify_judge import Stored
from tests.workload import RULES_YAML, Message, Workload

RULES = parse_rules(RULES_YAML)
TABLE = RULES.tables["inventory.stock"]
SETTLE = 1.0
LIMIT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall_ms(self) -> float:
        return self.now * 1000


class FakeTruth:
    """The table and the cache as dictionaries; each read is logged in ``calls``."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.cache: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.times: list[float] = []
        self.clock: Clock | None = None
        self.down: str | None = None

    def _log(self, call: str) -> None:
        self.calls.append(call)
        self.times.append(self.clock.now if self.clock else 0.0)

    def stored(self, keys: Mapping[str, ValueFormat]) -> dict[str, Stored]:
        self._log("redis")
        if self.down == "redis":
            raise rex.ConnectionError("connection refused")
        return {k: Stored(self.cache.get(k), "00000.s" if k in self.cache else None) for k in keys}

    def row(self, table: TableRules, key: Mapping[str, Any]) -> Row | None:
        self._log("db")
        if self.down == "db":
            raise OSError("database gone")
        return self.rows.get(key["id"])

    def owned(self, table: TableRules, primary_key: Sequence[str], key: str) -> bool:
        self._log("db")
        return any(key in implications(table, row, primary_key)[0] for row in self.rows.values())

    def commit(self, message: Message) -> None:
        """The database side of a change."""
        change = orjson.loads(message.value or b"{}")
        if change["after"] is None:
            self.rows.pop(change["before"]["id"], None)
        else:
            self.rows[change["after"]["id"]] = change["after"]

    def apply(self, message: Message) -> None:
        """What a correct worker writes for the change."""
        change = orjson.loads(message.value or b"{}")
        for key in implications(TABLE, change["before"], ["id"])[0]:
            self.cache.pop(key, None)
        for key, op in implications(TABLE, change["after"], ["id"])[0].items():
            assert isinstance(op.value, bytes)
            self.cache[key] = op.value


def _settings(**overrides: Any) -> InspectSettings:
    given = {
        "rules": Path("rules.yaml"),
        "topics": ["t.inventory.stock"],
        "inspect_db": "mysql://root@127.0.0.1:1/inventory",
        "inspect_sample_every": 1,
        "inspect_max_samples_per_s": 1000,
        "inspect_max_db_queries_per_s": 1000,
        "inspect_settle_s": SETTLE,
        "inspect_recheck_limit_s": LIMIT,
        "inspect_min_checks": 1,
        **overrides,
    }
    return InspectSettings(**given)


class Driven:
    """An inspector on a fake clock: time passes only when a test waits."""

    clock: Clock
    inspector: Inspector

    def wait(self, seconds: float, step: float = 0.1) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now += step
            self.inspector.run_due(limit=10_000)

    @property
    def report(self) -> dict[str, Any]:
        return self.inspector.view()


class Run(Driven):
    """An inspector, a workload and the fakes it reads, on one clock."""

    def __init__(self, seed: int = 1, **overrides: Any) -> None:
        self.clock = Clock()
        self.truth = FakeTruth()
        self.truth.clock = self.clock
        self.workload = Workload(seed=seed, topic="t.inventory.stock")
        self.inspector = Inspector(
            _settings(**overrides),
            RULES,
            self.truth,
            clock=self.clock,
            wall_ms=self.clock.wall_ms,
            rng=random.Random(seed),
            started_ms=0,
        )
        self.offset = 0

    def deliver(self, message: Message, *, apply: bool = True, commit: bool = True) -> None:
        if commit:
            self.truth.commit(message)
        if apply:
            self.truth.apply(message)
        self.inspector.offer(
            SourceRecord(message.topic, 0, self.offset, message.key, message.value, None)
        )
        self.offset += 1

    def changes(self, count: int) -> list[Message]:
        return [m for tx in self.workload.transactions(count) for m in tx if m.value is not None]


def _qty_update(workload: Workload, row_id: int) -> Message:
    """A change of a watched, projected column (qty) of row ``row_id``."""
    workload.pos += 100
    before = workload.rows[row_id]
    after = {**before, "qty": before["qty"] + 1}
    workload.rows[row_id] = after
    return workload._message("u", before, after, 0)


def _stamp(message: Message, ms: float) -> Message:
    change = orjson.loads(message.value or b"{}")
    change["source"]["ts_ms"] = int(ms)
    return Message(message.topic, message.key, orjson.dumps(change))


def test_a_change_applied_in_time_is_consistent_and_judged_once_it_settled():
    run = Run()
    (first, *_) = run.changes(1)
    run.deliver(_stamp(first, run.clock.wall_ms()))
    run.wait(SETTLE - 0.2)
    assert "db" not in run.truth.calls, "judged before the change settled"
    run.wait(0.4)
    assert run.report["checks"] == {"consistent": 1, "stale": 0, "missing": 0, "unexpected": 0}
    assert run.inspector.tracker.pending == 0
    ttc = run.report["time_to_consistency_s"]
    assert ttc["observations"] == 1 and ttc["max"] <= 0.15, "the first probe saw it"


def test_time_to_consistency_is_when_a_probe_of_the_cache_first_saw_the_change():
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(_stamp(insert, run.clock.wall_ms()), apply=False)
    run.wait(0.3)
    probes = run.truth.calls.count("redis")
    assert probes >= 2 and "db" not in run.truth.calls, "probes read the cache only"
    run.truth.apply(insert)
    run.wait(SETTLE)
    ttc = run.report["time_to_consistency_s"]
    assert 0.3 <= ttc["max"] <= 0.3 + 0.2 + 0.1  # the next probe, 0.2 s after the last one
    assert run.report["checks"]["consistent"] == 1


def test_a_check_reads_the_cache_before_the_database():
    """So a change committed between the two reads shows as a row ahead of the stream,
    never as a stale key."""
    run = Run()
    run.deliver(run.changes(1)[0])
    run.wait(SETTLE + 0.2)
    first_db = run.truth.calls.index("db")
    assert run.truth.calls[first_db - 1] == "redis"
    assert run.truth.times[first_db - 1] == run.truth.times[first_db], "in the same check"


def test_a_change_the_worker_never_applied_is_stale_until_fixed_with_its_time_to_consistency():
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(insert)
    run.wait(SETTLE + 0.2)
    (row_id,) = run.workload.rows
    lost = _stamp(_qty_update(run.workload, row_id), run.clock.wall_ms())
    was = dict(run.truth.cache)
    run.deliver(lost, apply=False)
    run.wait(SETTLE + 0.2)
    assert run.report["checks"]["stale"] == 1
    (example,) = run.report["latest_inconsistencies"]
    assert example["kind"] == "stale" and SETTLE <= example["age_s"] <= SETTLE + 0.3
    assert example["fields"] == ["qty"]  # the field's name, never its value
    assert run.inspector.tracker.pending == 1, "a wrong key is re-checked"
    run.wait(2.0)
    assert run.truth.cache == was  # still wrong: never written to
    run.truth.apply(lost)
    run.wait(3.0)
    assert run.report["recovered"] == 1 and run.inspector.tracker.pending == 0
    assert run.report["time_to_consistency_s"]["max"] >= SETTLE + 2.0


def test_an_inconsistency_that_outlives_the_recheck_limit_is_unresolved():
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(insert)
    run.deliver(_qty_update(run.workload, next(iter(run.workload.rows))), apply=False)
    run.wait(SETTLE + LIMIT + 6)
    assert run.report["unresolved"] == 1 and run.inspector.tracker.pending == 0


def test_the_cache_is_never_written():
    run = Run()
    for message in run.changes(50):
        run.deliver(message, apply=False)
    before = dict(run.truth.cache)
    run.wait(SETTLE + LIMIT + 6)
    assert run.truth.cache == before


def test_a_later_change_of_the_sampled_row_moves_the_check_until_the_row_settles():
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(insert)
    for _ in range(5):  # the row changes every 0.6 s: never settled for a second
        run.wait(0.6)
        update = _qty_update(run.workload, next(iter(run.workload.rows)))
        run.deliver(update)
    assert "db" not in run.truth.calls
    run.wait(SETTLE + 0.2)
    assert run.report["checks"]["consistent"] == 1
    assert run.truth.calls.count("db") == 1


def test_a_row_that_never_settles_within_the_limit_is_given_up():
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(insert)
    for _ in range(int((SETTLE + LIMIT) / 0.5) + 2):
        run.wait(0.5)
        update = _qty_update(run.workload, next(iter(run.workload.rows)))
        run.deliver(update)
    assert run.report["skipped"] == {"busy_row": 1}
    assert sum(run.report["checks"].values()) == 0


def test_a_row_ahead_of_the_stream_waits_for_its_change():
    """The database committed a change the stream has not brought: not stale, yet."""
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(insert)
    update = _qty_update(run.workload, next(iter(run.workload.rows)))
    run.truth.commit(update)  # committed, not yet in the stream nor in the cache
    run.wait(SETTLE + 0.5)
    assert sum(run.report["checks"].values()) == 0
    run.deliver(update, commit=False)
    run.wait(SETTLE + 0.2)
    assert run.report["checks"]["consistent"] == 1


def test_a_sampled_late_duplicate_is_judged_against_the_row_after_settle():
    """An old change re-delivered after newer ones: the newer one will not come again, so
    after a settle the row is judged as it stands (and a worker that let the old change
    through is caught)."""
    run = Run()
    (insert,) = run.workload._insert()
    update = _qty_update(run.workload, next(iter(run.workload.rows)))
    run.truth.commit(insert)
    run.truth.commit(update)
    run.truth.apply(update)  # the cache is right; then the old insert comes again
    run.deliver(insert, commit=False, apply=False)
    run.wait(2 * SETTLE + 0.5)
    assert run.report["checks"]["consistent"] == 1

    late = Run(seed=2)
    (insert,) = late.workload._insert()
    update = _qty_update(late.workload, next(iter(late.workload.rows)))
    late.truth.commit(insert)
    late.truth.commit(update)
    late.truth.apply(update)
    late.deliver(insert, commit=False)  # an ungated worker writes it over the newer value
    late.wait(2 * SETTLE + 0.5)
    assert late.report["checks"]["stale"] == 1


def _deleted_but_cached(run: Run) -> Message:
    """A row inserted (and cached), then deleted in the database and the stream while its
    key stays cached; the delete is returned, for the worker to apply late or never."""
    (insert,) = run.workload._insert()
    run.deliver(insert)
    run.wait(SETTLE + 0.2)
    (row_id,) = run.workload.rows
    delete, _tombstone = run.workload._delete(row_id)
    run.deliver(delete, apply=False)
    return delete


def test_a_deleted_rows_key_still_cached_is_unexpected_once_no_change_can_empty_it():
    run = Run()
    _deleted_but_cached(run)
    run.wait(SETTLE + 0.5)
    assert run.report["checks"]["unexpected"] == 0, "judged before another change could empty it"
    run.wait(SETTLE)
    assert run.report["checks"]["unexpected"] == 1


def test_a_stray_key_emptied_within_the_settle_is_no_inconsistency():
    """What the doubt is for: judged at once (trusting), the same stray is unexpected."""
    run = Run()
    delete = _deleted_but_cached(run)
    run.wait(SETTLE + 0.3)
    (sample,) = run.inspector.tracker._samples.values()
    trusted = check(sample, run.truth, trusting=True)
    assert isinstance(trusted, Judged) and trusted.outcome is Outcome.UNEXPECTED
    assert isinstance(check(sample, run.truth), Deferred)
    run.truth.apply(delete)  # the worker catches up
    run.wait(SETTLE + 0.5)
    assert run.report["checks"] == {"consistent": 1 + 1, "stale": 0, "missing": 0, "unexpected": 0}


def _without_qty(run: Run, row_id: int, note: str | None = None) -> Message:
    """A change of row ``row_id`` after the projected column qty was dropped (``note`` set)."""
    run.workload.pos += 100
    before = run.workload.rows[row_id]
    after = {name: value for name, value in before.items() if name != "qty"}
    after["note"] = note if note is not None else before.get("note")
    run.workload.rows[row_id] = after
    return run.workload._message("u", before, after, 0)


def test_a_row_the_rules_cannot_render_is_skipped_as_unrenderable_with_its_keys_unjudged():
    """A projected column dropped: the worker dead-letters the row's changes (``render_failed``).

    Such a row implies no key: judged, it would be consistent, and a key of it still cached
    a stray. Neither the row the check reads nor the sampled change's image is judged.
    """
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(insert)
    (row_id,) = run.workload.rows
    dropped = _without_qty(run, row_id)
    run.deliver(dropped, apply=False)  # the row's sample follows it; its key is still cached
    run.wait(2 * SETTLE + 0.5)
    assert sum(run.report["checks"].values()) == 0
    assert run.report["skipped"] == {"unrenderable": 1}
    assert run.inspector.tracker.pending == 0
    run.deliver(_without_qty(run, row_id, note="unwatched"), apply=False)  # planned: no ops
    run.wait(SETTLE + 0.5)
    assert sum(run.report["checks"].values()) == 0
    assert run.report["skipped"] == {"unrenderable": 2}
    assert run.inspector.tracker.pending == 0


def test_a_sampled_change_the_rules_cannot_render_is_skipped_as_unrenderable_not_undecodable():
    """The first change of a row that lacks a projected column: it decoded, it cannot render."""
    run = Run()
    run.workload._insert()  # the row as the database holds it; its insert is not delivered
    (row_id,) = run.workload.rows
    after = {name: value for name, value in run.workload.rows[row_id].items() if name != "qty"}
    run.deliver(run.workload._message("c", None, after, 0), apply=False)
    assert run.report["skipped"] == {"unrenderable": 1}
    assert run.inspector.tracker.pending == 0


def test_an_evicted_key_is_missing_not_inconsistent():
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(insert)
    run.truth.cache.clear()
    run.wait(SETTLE + 0.2)
    assert run.report["checks"]["missing"] == 1
    assert run.report["windows"]["5m"]["inconsistent"] == 0


def test_only_tables_with_set_rules_tombstones_and_records_before_the_start_are_left_out():
    run = Run()
    (insert,) = run.workload._insert()
    record = SourceRecord(insert.topic, 0, 0, insert.key, insert.value, timestamp_ms=-1)
    run.inspector.offer(record)  # written before the inspector started
    run.inspector.offer(SourceRecord(insert.topic, 0, 1, insert.key, None, None))  # tombstone
    other = orjson.loads(insert.value or b"{}")
    other["source"]["table"] = "other"
    run.inspector.offer(SourceRecord(insert.topic, 1, 2, insert.key, orjson.dumps(other), None))
    assert run.inspector.tracker.pending == 0
    run.inspector.offer(SourceRecord(insert.topic, 0, 3, insert.key, b"{not json", None))
    assert run.report["skipped"] == {"undecodable": 1}


def test_one_in_n_changes_is_sampled_at_most_at_the_rate():
    run = Run(inspect_sample_every=4, inspect_max_samples_per_s=50)
    messages = run.changes(2000)
    for message in messages:
        run.deliver(message)
    sampled = run.inspector.tracker.pending + run.report["skipped"].get("rate", 0)
    assert 0.15 * len(messages) < sampled < 0.35 * len(messages), "about one in four"
    assert run.inspector.tracker.pending <= 50 + 5, "no more than the rate allows"


def test_database_queries_stay_under_the_budget():
    run = Run(inspect_max_db_queries_per_s=20)
    for message in run.changes(300):
        run.deliver(message)
        run.clock.now += 0.001
    started = run.clock.now
    run.wait(5.0)
    queries = run.truth.calls.count("db")
    assert queries <= 20 * (run.clock.now - started) + 20 + 5  # rate x time + the burst


def test_while_redis_is_down_checks_wait_and_count_retries_without_an_outcome():
    run = Run()
    (insert,) = run.workload._insert()
    run.deliver(insert)
    run.truth.down = "redis"
    retries = metrics.RETRIES.labels("redis")._value.get()
    run.wait(SETTLE + 3)
    assert sum(run.report["checks"].values()) == 0
    assert metrics.RETRIES.labels("redis")._value.get() > retries
    run.truth.down = None
    run.wait(6)
    assert run.report["checks"]["consistent"] == 1


def test_a_lost_database_connection_is_waited_for_too():
    run = Run()
    run.deliver(run.changes(1)[0])
    run.truth.down = "db"
    retries = metrics.RETRIES.labels("database")._value.get()
    run.wait(SETTLE + 2)
    assert metrics.RETRIES.labels("database")._value.get() > retries
    run.truth.down = None
    run.wait(6)
    assert run.report["checks"]["consistent"] == 1


def test_the_report_gives_nines_per_window_and_a_page_for_people():
    run = Run()
    changes = run.changes(40)
    for message in changes:
        run.deliver(message)
    run.deliver(_qty_update(run.workload, next(iter(run.workload.rows))), apply=False)
    run.wait(SETTLE + 0.5)
    run.inspector.report.publish(run.clock.now, run.inspector.tracker.pending)
    report = run.report
    window = report["windows"]["5m"]
    assert window["checks"] >= 2 and window["inconsistent"] >= 1
    assert window["nines"] == pytest.approx(-math.log10(window["inconsistent"] / window["checks"]))
    gauge = metrics.INSPECT_NINES.labels("5m")._value.get()
    assert gauge == pytest.approx(window["nines"])
    page = text_page(report)
    assert "5m" in page and report["latest_inconsistencies"][0]["key"] in page
