"""Script calls, read back as the apply script reads them: each op gets its own table and TTLs.

The markers (T table, L ttl tombstone_ttl) hold until the next one within a call and never
beyond it; a call's key ops stay within ``max_ops`` and ``max_args`` (markers included)
unless one op alone is larger; the notifications of its last key op ride with it.
"""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import (
    DeleteKey,
    IndexKind,
    IndexMember,
    KeyOp,
    Notify,
    SetRow,
    ValueFormat,
)
from cdc_cache.sink.encoding import Arg, Call, calls

AT = SourcePosition(0, 2, 9, 0)
TTLS = st.sampled_from([1_000, 60_000, 3_600_000])


@st.composite
def key_ops(draw: st.DrawFn) -> KeyOp:
    key, table = draw(st.sampled_from(["a", "b", "c"])), draw(st.sampled_from(["", "t", "u"]))
    kind = draw(st.sampled_from(["json", "hash", "delete", "index"]))
    if kind == "delete":
        return DeleteKey(key, AT, draw(TTLS), table)
    if kind == "index":
        return IndexMember(key, "m", "1", draw(st.booleans()), AT, draw(TTLS), draw(TTLS),
                           IndexKind.ZSET, table)  # fmt: skip
    value: bytes | tuple[tuple[str, str], ...] = (
        b"{}" if kind == "json" else (("f", "1"),) * draw(st.integers(0, 3))
    )
    fmt = ValueFormat.JSON if kind == "json" else ValueFormat.HASH
    return SetRow(key, AT, value, fmt, draw(TTLS), draw(TTLS), table,
                  only_if_cached=draw(st.booleans()))  # fmt: skip


@st.composite
def batches(draw: st.DrawFn) -> list[KeyOp | Notify]:
    ops: list[KeyOp | Notify] = []
    for op in draw(st.lists(key_ops(), min_size=1, max_size=20)):
        ops.append(op)
        if draw(st.booleans()):
            ops.append(Notify("ch", b"{}", 10))
    return ops


def read(call: Call) -> Iterator[tuple[str, str, tuple[Arg, Arg] | None]]:
    """Per op of ``call``: its kind, the table and the TTLs in force for it, as the script."""
    args, a = call.args, 0
    table, ttls = "", None
    while a < len(args):
        if args[a] == "T":
            table, a = str(args[a + 1]), a + 2
        if args[a] == "L":
            ttls, a = (args[a + 1], args[a + 2]), a + 3
        if args[a] == "R":
            a += 1
        kind = str(args[a])
        yield kind, table, ttls
        width = {"J": 4, "D": 3, "M": 9, "N": 4, "O": 4}.get(kind)
        a += width if width is not None else 4 + 2 * int(args[a + 3])


@settings(max_examples=300)
@given(
    ops=batches(),
    max_ops=st.integers(1, 6),
    max_args=st.integers(1, 60),
    outbox=st.booleans(),
)
def test_every_op_reads_back_with_its_own_table_and_ttls_in_any_cut(
    ops: list[KeyOp | Notify], max_ops: int, max_args: int, outbox: bool
) -> None:
    cut = list(calls(ops, range(len(ops)), max_ops=max_ops, max_args=max_args, outbox=outbox))
    assert [i for call in cut for i in call.ops] == list(range(len(ops)))
    for call in cut:
        read_back = list(read(call))
        assert len(read_back) == len(call.ops)
        key_ops_in_call = [ops[i] for i in call.ops if not isinstance(ops[i], Notify)]
        assert len(key_ops_in_call) <= max_ops or len(key_ops_in_call) == 1
        if len(key_ops_in_call) > 1:  # notifications ride after their host, past the bound
            trailing = (
                len(call.ops)
                - 1
                - max(n for n, i in enumerate(call.ops) if not isinstance(ops[i], Notify))
            )
            assert len(call.args) - 4 * trailing <= max_args
        for index, (kind, table, ttls) in zip(call.ops, read_back, strict=True):
            op = ops[index]
            if isinstance(op, Notify):
                assert kind == ("O" if outbox else "N")
                continue
            assert table == op.table
            assert ttls is not None
            assert ttls[1] == op.tombstone_ttl_ms
            if not isinstance(op, DeleteKey):  # a delete uses only the tombstone TTL
                assert ttls[0] == op.ttl_ms
