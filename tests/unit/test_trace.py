"""cdc-cache trace judges each change of a row against the key's version as the gate does."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, Notify, SetRow, ValueFormat
from cdc_cache.plan.invalidations import Invalidation
from cdc_cache.plan.route import Planned, Rejected
from cdc_cache.sink.encoding import version_of
from cdc_cache.sink.key_state import KeyState
from cdc_cache.tools.trace import Gate, gate, is_row, parse_row_key, trace_of
from cdc_cache.tools.trace_report import as_json, format_text

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
