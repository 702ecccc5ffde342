"""The pure pieces of ``cdc-cache inspect``: judging keys, nines over windows, the token
bucket, the sampler and the tracker of samples in flight."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.events import ChangeEvent, SourceRecord
from cdc_cache.inspector.consistency import (
    KeyFinding,
    Outcome,
    implications,
    judge_keys,
    same_projection,
    strays,
    worst,
)
from cdc_cache.inspector.nines import Windows, nines_of
from cdc_cache.inspector.sampling import Sampler, Skip, TokenBucket, Tracker, recheck_delay
from cdc_cache.plan.cache_ops import SetRow
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.source.envelope import decode
from cdc_cache.tools.verify_judge import Stored
from tests.workload import RULES_YAML, Workload

TABLE = parse_rules(
    """
tables:
  shop.stock:
    watch: [id, sku_id, warehouse, qty]
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [id, sku_id, warehouse, qty]
      - key: "stockh:{id}"
        format: hash
        fields: [id, qty]
      - key: "sku:{sku_id}:availability"
        action: delete
"""
).tables["shop.stock"]
ROW = {"id": 7, "sku_id": 3, "warehouse": "north", "qty": 5, "note": "x"}


def _keys(row: dict[str, object] | None) -> dict[str, SetRow]:
    """The ``set`` keys ``row`` renders, with their values."""
    return implications(TABLE, row, ["id"])[0]


def _held(row: dict[str, object]) -> dict[str, Stored]:
    """What a correct worker leaves for ``row``."""
    out = {}
    for key, op in _keys(row).items():
        value = op.value if isinstance(op.value, bytes) else dict(op.value)
        out[key] = Stored(value, "00001.s")
    return out


# --- judging keys -------------------------------------------------------------------------


def test_a_row_renders_only_its_set_keys():
    assert set(_keys(ROW)) == {"stock:3:north", "stockh:7"}
    assert _keys(None) == {}


def test_keys_holding_the_rows_projection_are_consistent():
    expected = _keys(ROW)
    findings = judge_keys(expected, _held(ROW))
    assert {f.outcome for f in findings} == {Outcome.CONSISTENT}
    assert worst(findings) is Outcome.CONSISTENT


def test_a_stale_key_names_the_fields_that_differ_and_never_their_values():
    expected = _keys(ROW)
    held = _held({**ROW, "qty": 6})
    findings = {f.key: f for f in judge_keys(expected, held)}
    assert findings["stock:3:north"] == KeyFinding("stock:3:north", Outcome.STALE, ("qty",))
    assert findings["stockh:7"] == KeyFinding("stockh:7", Outcome.STALE, ("qty",))


def test_an_absent_key_is_missing_and_a_value_without_its_version_is_still_right():
    expected = _keys(ROW)
    held = _held(ROW)
    del held["stockh:7"]
    held["stock:3:north"] = Stored(held["stock:3:north"].value, None)
    findings = {f.key: f.outcome for f in judge_keys(expected, held)}
    assert findings == {"stock:3:north": Outcome.CONSISTENT, "stockh:7": Outcome.MISSING}


def test_a_key_of_the_wrong_type_or_garbage_is_stale():
    expected = _keys(ROW)
    held = {
        "stock:3:north": Stored(b"{not json", "1.s"),
        "stockh:7": Stored(None, "1.s", wrong_type=True),
    }
    findings = {f.key: f for f in judge_keys(expected, held)}
    assert findings["stock:3:north"].fields == ("(value)",)
    assert findings["stockh:7"].fields == ("(wrong type)",)


def test_an_unwatched_column_does_not_change_the_projection():
    assert same_projection(_keys(ROW), _keys({**ROW, "note": "y"}))
    assert not same_projection(_keys(ROW), _keys({**ROW, "qty": 0}))
    moved = _keys({**ROW, "warehouse": "south"})
    assert not same_projection(_keys(ROW), moved)


def test_strays_are_the_present_keys_the_row_no_longer_renders():
    now = _keys({**ROW, "warehouse": "south"})
    held = {**_held(ROW), **_held({**ROW, "warehouse": "south"})}
    assert strays(["stock:3:north", "stock:3:south", "stockh:7", "gone"], now, held) == [
        "stock:3:north"
    ]


def test_the_worst_outcome_wins():
    findings = [
        KeyFinding("a", Outcome.MISSING),
        KeyFinding("b", Outcome.STALE),
        KeyFinding("c", Outcome.CONSISTENT),
    ]
    assert worst(findings) is Outcome.STALE
    assert worst([*findings, KeyFinding("d", Outcome.UNEXPECTED)]) is Outcome.UNEXPECTED
    assert worst([]) is Outcome.CONSISTENT


# --- nines --------------------------------------------------------------------------------


def test_nines_count_the_leading_nines_of_the_consistent_share():
    assert nines_of(1000, 1) == pytest.approx(3.0)
    assert nines_of(100_000, 7) == pytest.approx(-math.log10(7e-5))
    assert nines_of(1000, 0) == math.inf
    assert math.isnan(nines_of(10, 1, min_checks=100)), "too few checks to tell"
    assert math.isnan(nines_of(0, 0))


@given(st.integers(1, 10**7), st.integers(1, 10**7))
def test_more_inconsistencies_never_mean_more_nines(checks, bad):
    bad = min(bad, checks)
    assert nines_of(checks, bad) >= nines_of(checks, min(checks, bad + 1))
    assert nines_of(checks, bad) >= 0


def test_windows_keep_each_span_and_forget_the_rest():
    windows = Windows((300, 3600))
    windows.add(0.5, inconsistent=True)
    for second in range(1, 3400):
        windows.add(float(second), inconsistent=False)
    assert windows.totals(300, 3400.0) == (299, 0)
    assert windows.totals(3600, 3400.0) == (3400, 1)
    assert windows.totals(3600, 3700.0) == (3299, 0), "the inconsistency left the hour"


# --- rate, sampling, scheduling -----------------------------------------------------------


def test_the_bucket_refills_at_its_rate_and_waits_off_its_debt():
    bucket = TokenBucket(rate=10, burst=10, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(20)) == 10
    assert bucket.wait_s(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1)
    bucket.charge(0.1, 5)  # a check that needed five more queries
    assert not bucket.take(0.5) and bucket.wait_s(0.5) == pytest.approx(0.2)  # 1 in debt


def test_the_sampler_picks_one_in_n():
    sampler = Sampler(every=10, max_per_s=1e9, now=0.0, rng=random.Random(3))
    picked = sum(sampler.chosen() for _ in range(100_000))
    assert 9000 < picked < 11000
    assert all(Sampler(1, 1, 0.0, random.Random()).chosen() for _ in range(100))


def _events(count: int, seed: int = 1) -> list[tuple[bytes, ChangeEvent]]:
    workload = Workload(seed=seed)
    out = []
    for tx in workload.transactions(count):
        for m in tx:
            if m.value is not None:
                event = decode(SourceRecord(m.topic, 0, 0, m.key, m.value))
                assert isinstance(event, ChangeEvent)
                out.append((m.key, event))
    return out


WORKLOAD_TABLE = parse_rules(RULES_YAML).tables["inventory.stock"]


def test_a_sample_is_probed_at_doubling_intervals_then_judged_once_its_row_settled():
    tracker = Tracker(settle_s=1.0, limit_s=10.0, max_pending=10, probe_s=0.05)
    (key, first), *rest = _events(30)
    row = ("t", 0, key)
    assert tracker.start(row, WORKLOAD_TABLE, first, 0.0) is None
    looks, step = [], 0
    while (sample := tracker.next_due(step / 1000)) is None or tracker.probing(sample, step / 1000):
        if sample is not None:
            looks.append(step)
            tracker.probe_again(sample, step / 1000)
        step += 1
    assert looks == pytest.approx([50, 150, 350, 750], abs=1), "probes (ms) until it settled"
    assert step == 1000
    later = next(e for k, e in rest if k == key and e.position > first.position)
    tracker.later(sample, 5.0)
    assert tracker.update(row, later, 1.5) is None
    assert tracker.next_due(1.56) is sample and tracker.probing(sample, 1.56), "probed anew"
    tracker.later(sample, 1.56)
    assert tracker.next_due(2.49) is None, "the later change has not settled"
    assert tracker.next_due(2.5) is sample and sample.event is later and sample.changes == 2


def test_a_late_older_change_does_not_replace_the_newest_but_adds_its_keys():
    tracker = Tracker(settle_s=1.0, limit_s=10.0, max_pending=10)
    events = [(k, e) for k, e in _events(200) if e.before and e.after]
    key, move = next(
        (k, e)
        for k, e in events
        if e.before["warehouse"] != e.after["warehouse"]  # type: ignore[index]
    )
    row = ("t", 0, key)
    tracker.start(row, WORKLOAD_TABLE, move, 0.0)
    (sample,) = tracker._samples.values()
    assert len([k for k in sample.keys if k.startswith("stock:")]) == 2, "old and new key"
    older = ChangeEvent(**{**_fields(move), "position": move.position.__class__(0, 0, 1, 0)})
    tracker.update(row, older, 0.1)
    assert sample.event is move


def _fields(event: ChangeEvent) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__slots__}  # type: ignore[attr-defined]


def test_a_full_backlog_and_a_busy_row_are_skipped():
    tracker = Tracker(settle_s=1.0, limit_s=2.0, max_pending=1)
    (key, first), (other, second), *_ = _events(5)
    assert tracker.start(("t", 0, key), WORKLOAD_TABLE, first, 0.0) is None
    assert tracker.start(("t", 1, other), WORKLOAD_TABLE, second, 0.0) is Skip.BACKLOG
    assert tracker.update(("t", 0, key), first, 2.5) is None
    assert tracker.update(("t", 0, key), first, 3.1) is Skip.BUSY_ROW
    assert tracker.pending == 0


def test_rechecks_back_off_to_a_cap():
    assert [recheck_delay(n) for n in (1, 2, 3, 6, 30)] == [0.25, 0.5, 1.0, 5.0, 5.0]
