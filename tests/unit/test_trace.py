"""cdc-cache trace judges each change of a row against the key's version as the gate does."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, IndexMember, Notify, SetRow, ValueFormat
from cdc_cache.plan.invalidations import Invalidation
from cdc_cache.plan.planner import plan
from cdc_cache.plan.route import Planned, Rejected
from cdc_cache.sink.encoding import version_of
from cdc_cache.sink.key_state import KeyState
from cdc_cache.tools.index_judge import StoredIndex
from cdc_cache.tools.trace import Gate, HeldIndexes, gate, is_row, parse_row_key, trace_of
from cdc_cache.tools.trace_report import as_json, format_text
from tests.unit.test_index_keys import QUIET
from tests.unit.test_index_keys import change as product_change
from tests.unit.test_index_keys import row as product_row

KEY = "stock:{42}:w1"
TABLE = "inventory.stock"


def at(pos: int) -> SourcePosition:
    return SourcePosition(0, 3, pos, 0)


def change(offset: int, op: Op, pos: int, *, delete: bool = False) -> Planned:
    event = ChangeEvent(TABLE, op, None, {"id": 42, "qty": pos}, {"id": 42}, at(pos), 1_700_000)
    key_op: SetRow | DeleteKey = (
        DeleteKey(KEY, at(pos), 3_600_000)
        if delete
        else SetRow(
            KEY, at(pos), orjson.dumps({"qty": pos}), ValueFormat.JSON, 86_400_000, 3_600_000
        )
    )
    notify = Notify("inventory:w1", b"{}", 100)
    record = SourceRecord("db.inventory.stock", 1, offset, b"{}", b"{}")
    return Planned(record, event, (key_op, notify))


def holding(version: str | None) -> dict[str, KeyState]:
    return {KEY: KeyState(KEY, "string", '{"qty": 2}', 5000, version)}


def explain(rejected: Rejected) -> str:
    return f"{rejected.error.kind}: scrubbed"


def traced(routed, states, *, topics=("t",), scanned=1):
    return trace_of(
        TABLE, {"id": "42"}, topics=topics, scanned=scanned, routed=routed, states=states,
        explain=explain,
    )  # fmt: skip


INSERT, UPDATE, DELETE = (
    change(7, Op.CREATE, 1),
    change(8, Op.UPDATE, 2),
    change(9, Op.DELETE, 3, delete=True),
)


def test_the_change_the_key_holds_is_duplicate_older_stale_newer_applied():
    stored = version_of(UPDATE.ops[0])  # type: ignore[arg-type]
    trace = traced(
        [INSERT, UPDATE, DELETE], holding(stored), topics=["db.inventory.stock"], scanned=30
    )
    assert [c.ops[0].gate for c in trace.changes] == [Gate.STALE, Gate.DUPLICATE, Gate.APPLIED]
    # a notification is published only with its host: it shares the host's verdict
    assert [c.ops[1].gate for c in trace.changes] == [Gate.STALE, Gate.DUPLICATE, Gate.APPLIED]
    assert trace.pending == 1  # the delete at offset 9 is not in the cache
    (key,) = trace.keys
    assert key.holds is trace.changes[1]


def test_an_absent_key_without_a_version_takes_every_change():
    absent = {KEY: KeyState(KEY, "none", None, None, None)}
    trace = traced([INSERT, UPDATE], absent, topics=["t"], scanned=3)
    assert [c.ops[0].gate for c in trace.changes] == [Gate.APPLIED, Gate.APPLIED]
    assert trace.keys[0].holds is None


def test_a_delete_and_a_set_at_one_position_rank_the_set_above():
    # a primary-key change reaches the topic as delete + create at one position
    delete, create = change(3, Op.DELETE, 5, delete=True), change(4, Op.CREATE, 5)
    stored = version_of(create.ops[0])  # type: ignore[arg-type]
    trace = traced([delete, create], holding(stored), topics=["t"], scanned=2)
    assert [c.ops[0].gate for c in trace.changes] == [Gate.STALE, Gate.DUPLICATE]


positions = st.builds(
    SourcePosition,
    st.integers(0, 3),
    st.integers(0, 10**6),
    st.integers(0, 10**9),
    st.integers(0, 50),
)


@given(positions, positions, st.booleans(), st.booleans())
def test_the_verdict_follows_the_order_of_positions(a, b, a_deletes, b_deletes):
    op_a = DeleteKey(KEY, a, 1) if a_deletes else SetRow(KEY, a, b"{}", ValueFormat.JSON, 1, 1)
    op_b = DeleteKey(KEY, b, 1) if b_deletes else SetRow(KEY, b, b"{}", ValueFormat.JSON, 1, 1)
    verdict = gate(version_of(op_a), version_of(op_b))
    rank_a, rank_b = (
        (a.epoch, a.major, a.minor, a.row, not a_deletes),
        (
            b.epoch,
            b.major,
            b.minor,
            b.row,
            not b_deletes,
        ),
    )
    expected = (
        Gate.APPLIED if rank_a > rank_b else Gate.DUPLICATE if rank_a == rank_b else Gate.STALE
    )
    assert verdict is expected


def test_a_dead_lettered_change_shows_why_and_the_deletes_it_still_made():
    event = UPDATE.event
    error = RenderError("needs column 'warehouse' (secret value)", UPDATE.record)
    rejected = Rejected(error, event, Invalidation(deletes=(DeleteKey(KEY, at(2), 3_600_000),)))
    trace = traced([rejected], holding(None), topics=["t"], scanned=1)
    (dead,) = trace.changes
    assert dead.error == "render_failed: scrubbed"
    assert [(o.action, o.gate) for o in dead.ops] == [("delete", Gate.APPLIED)]
    assert "secret value" not in format_text(trace)


def test_a_row_is_matched_by_table_and_every_key_column_as_text():
    event = ChangeEvent(TABLE, Op.UPDATE, None, {}, {"id": 42, "w": "a"}, at(1), None)
    assert is_row(event, TABLE, {"id": "42", "w": "a"})
    assert not is_row(event, TABLE, {"id": "42"})
    assert not is_row(event, "inventory.other", {"id": "42", "w": "a"})
    assert not is_row(event, TABLE, {"id": "43", "w": "a"})


def test_the_row_key_is_column_value_pairs():
    assert parse_row_key(["id=42", "w=a=b"]) == {"id": "42", "w": "a=b"}
    with pytest.raises(ValueError, match="column=value"):
        parse_row_key(["42"])
    with pytest.raises(ValueError, match="primary key"):
        parse_row_key([])


def test_text_and_json_name_each_change_its_ops_verdicts_and_the_key_now():
    stored = version_of(UPDATE.ops[0])  # type: ignore[arg-type]
    trace = traced(
        [INSERT, UPDATE, DELETE], holding(stored), topics=["db.inventory.stock"], scanned=30
    )
    text = format_text(trace)
    assert "inventory.stock id=42: 3 changes on db.inventory.stock (30 records read)" in text
    assert f"set               {KEY}  duplicate" in text
    assert f"delete            {KEY}  applied" in text
    assert f"{KEY}  string  TTL 5 s  holds db.inventory.stock[1]@8" in text
    assert "1 operation(s) newer than their key's version" in text
    data = orjson.loads(orjson.dumps(as_json(trace)))
    assert data["pending"] == 1
    assert [c["ops"][0]["gate"] for c in data["changes"]] == ["stale", "duplicate", "applied"]
    assert data["keys"] == [
        {
            "key": KEY,
            "type": "string",
            "value": '{"qty": 2}',
            "ttl_ms": 5000,
            "version": stored,
            "holds": "db.inventory.stock[1]@8",
        }
    ]


def test_a_set_on_a_value_without_a_version_is_an_invalidation_and_a_delete_is_not():
    # an application's fill, or a version swept: the gate cannot order it, so it deletes
    unversioned = {KEY: KeyState(KEY, "string", '{"qty": 1}', 5000, None)}
    trace = traced([UPDATE, DELETE], unversioned, topics=["t"], scanned=2)
    assert [c.ops[0].gate for c in trace.changes] == [Gate.INVALIDATED, Gate.APPLIED]
    assert trace.changes[0].ops[1].gate is Gate.APPLIED  # its notification is still sent
    assert trace.pending == 2


# -- index keys (zadd, sadd): member ops gated per member, memberships shown ----------------


def _product(offset: int, n: int, op: Op, before, after) -> Planned:
    event = product_change(n, op, before, after)
    record = SourceRecord("db.shop.products", 0, offset, b"{}", b"{}")
    return Planned(record, event, tuple(plan(event, QUIET)))


def _members(routed) -> dict[tuple[str, str], str]:
    """Each pair's newest version after a worker applied ``routed``."""
    newest: dict[tuple[str, str], str] = {}
    for item in routed:
        for op in item.ops:
            if isinstance(op, IndexMember):
                pair = (op.key, op.member)
                newest[pair] = max(newest.get(pair, ""), version_of(op))
    return newest


def _product_trace(routed, indexes, versions):
    return trace_of(
        "shop.products", {"id": "7"}, topics=["db.shop.products"], scanned=len(routed),
        routed=routed, states={}, explain=explain, held=HeldIndexes(indexes, versions),
    )  # fmt: skip


CAT5, CAT6, GROUP = "category:5:by_price", "category:6:by_price", "group:9:members"
INSERTED = _product(3, 1, Op.CREATE, None, product_row(7, 5, 12.5))
MOVED = _product(4, 2, Op.UPDATE, product_row(7, 5, 12.5), product_row(7, 6, 12.5))


def test_member_ops_are_judged_against_the_members_version_and_memberships_shown():
    versions = _members([INSERTED, MOVED])
    indexes = {
        CAT5: StoredIndex({}, exists=True),
        CAT6: StoredIndex({"7": 12.5}, exists=True),
        GROUP: StoredIndex({"7": None}, exists=True),
    }
    trace = _product_trace([INSERTED, MOVED], indexes, versions)
    ops = [[(o.action, o.target, o.member, o.gate) for o in c.ops] for c in trace.changes]
    assert ops[0] == [
        ("zadd", CAT5, "7", Gate.STALE),  # the move took it out later
        ("sadd", GROUP, "7", Gate.STALE),
    ]
    assert ops[1] == [
        ("zrem", CAT5, "7", Gate.DUPLICATE),
        ("zadd", CAT6, "7", Gate.DUPLICATE),
        ("sadd", GROUP, "7", Gate.DUPLICATE),
    ]
    assert trace.pending == 0 and trace.damaged == 0
    shown = {(m.key, m.member): (m.present, m.score, m.holds) for m in trace.members}
    assert shown == {
        (CAT5, "7"): (False, None, trace.changes[1]),
        (GROUP, "7"): (True, None, trace.changes[1]),
        (CAT6, "7"): (True, 12.5, trace.changes[1]),
    }
    text = format_text(trace)
    assert f"zrem              {CAT5} member 7  duplicate" in text
    assert f"zadd              {CAT6} member 7 score 12.5  duplicate" in text
    assert "index memberships now:" in text and "keys now:" not in text
    assert f"  {CAT6} member 7  present, score 12.5  holds db.shop.products[0]@4" in text
    assert f"  {CAT5} member 7  absent  holds db.shop.products[0]@4" in text
    data = orjson.loads(orjson.dumps(as_json(trace)))
    assert data["damaged"] == 0
    cat6 = next(m for m in data["members"] if m["key"] == CAT6)
    assert cat6 == {
        "key": CAT6, "member": "7", "type": "zset", "present": True, "score": 12.5,
        "index": "exists", "version": versions[CAT6, "7"],
        "holds": "db.shop.products[0]@4", "differs": False,
    }  # fmt: skip


def test_a_member_taken_out_or_scored_otherwise_by_hand_differs_from_its_version():
    versions = _members([INSERTED, MOVED])
    zrem = {CAT6: StoredIndex({}, exists=True), GROUP: StoredIndex({"7": None}, exists=True)}
    trace = _product_trace([INSERTED, MOVED], zrem, versions)
    assert trace.damaged == 1 and trace.pending == 0
    assert [m.key for m in trace.members if m.differs] == [CAT6]
    text = format_text(trace)
    assert f"  {CAT6} member 7  absent  holds db.shop.products[0]@4" in text
    assert "differs: that change added it with score 12.5" in text
    assert "1 index membership(s) differ" in text
    rescored = {**zrem, CAT6: StoredIndex({"7": 4.0}, exists=True)}
    assert _product_trace([INSERTED, MOVED], rescored, versions).damaged == 1
    left = {**rescored, CAT6: StoredIndex({"7": 12.5}, exists=True)}
    left[CAT5] = StoredIndex({"7": 12.5}, exists=True)  # the move's removal undone
    damaged = _product_trace([INSERTED, MOVED], left, versions).members
    assert [m.key for m in damaged if m.differs] == [CAT5]


def test_an_addition_to_an_index_absent_until_a_snapshot_is_an_invalidation():
    versions = _members([INSERTED])  # the move is not applied yet; CAT6 vanished, left holding
    indexes = {
        CAT5: StoredIndex({"7": 12.5}, exists=True),
        CAT6: StoredIndex({}, exists=False, left_holding=True),
        GROUP: StoredIndex({"7": None}, exists=True),
    }
    trace = _product_trace([INSERTED, MOVED], indexes, versions)
    gates = {(o.action, o.target): o.gate for o in trace.changes[1].ops}
    assert gates[("zadd", CAT6)] is Gate.INVALIDATED
    assert gates[("zrem", CAT5)] is Gate.APPLIED
    assert trace.pending == 3 and trace.damaged == 0, "an absent index is no damage"
    text = format_text(trace)
    assert f"  {CAT6} member 7  index absent until `cdc-cache snapshot` rebuilds it" in text
    cat6 = next(m for m in as_json(trace)["members"] if m["key"] == CAT6)
    assert (cat6["index"], cat6["version"], cat6["holds"]) == ("absent_until_snapshot", None, None)
