"""The gateway's per-client bookkeeping, without sockets: what a client is handed, in what
order, and when it is dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.notify.frames import Frame, encode_frame, format_id, lost_after, parse_id
from cdc_cache.notify.rate_limit import TokenBucket
from cdc_cache.notify.session import SLOW_CLOSE_CODE, Session
from cdc_cache.notify.tokens import Grant


class FakeSocket:
    """Records how the session closes it; never used for sending in these tests."""

    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def session(queue_size: int = 100, patterns: tuple[str, ...] = ("c:*",)) -> Session:
    budget = TokenBucket(10, 10, 0.0)
    s = Session(FakeSocket(), Grant(patterns, 2**40), queue_size, budget)  # type: ignore[arg-type]
    s.patterns.add("c:*")
    return s


def frame(channel: str, ms: int, seq: int = 0) -> Frame:
    return encode_frame(channel, (ms, seq), orjson.dumps({"n": ms, "committed_at_ms": 5}))


def handed(s: Session) -> list[dict[str, Any]]:
    out = []
    while not s.queue.empty():
        out.append(orjson.loads(s.queue.get_nowait()))
    return out


def test_stream_ids_round_trip_and_order_numerically() -> None:
    assert parse_id("1700000000000-12") == (1700000000000, 12)
    assert parse_id(b"5") == (5, 0)
    assert format_id(parse_id("9-10")) == "9-10"
    assert parse_id("9-10") > parse_id("9-9")  # not string order
    with pytest.raises(ValueError):
        parse_id("x-1")


def test_message_frame_wraps_the_payload_unchanged() -> None:
    f = frame("c:a", 7, 1)
    assert orjson.loads(f.data) == {
        "type": "message",
        "channel": "c:a",
        "id": "7-1",
        "data": {"n": 7, "committed_at_ms": 5},
    }
    assert f.committed_at_ms == 5
    with pytest.raises(ValueError):
        encode_frame("c:a", (1, 0), b"{broken")


@given(st.lists(st.integers(1, 30), max_size=60))
def test_a_client_is_handed_each_id_once_in_increasing_order(ids: list[int]) -> None:
    s = session()
    s.last["c:a"] = (0, 0)
    for ms in ids:  # redelivered and late ids mixed in
        s.offer(frame("c:a", ms))
    got = [parse_id(m["id"])[0] for m in handed(s)]
    records = [ms for i, ms in enumerate(ids) if all(ms > before for before in ids[:i])]
    assert got == records  # strictly increasing: nothing twice, nothing older than sent


def test_unsubscribed_channels_and_ids_before_the_start_are_not_handed() -> None:
    s = session()
    s.last["c:a"] = (10, 0)
    s.offer(frame("c:b", 11))  # not subscribed
    s.offer(frame("c:a", 10))  # at the start id: the client has it
    s.offer(frame("c:a", 11))
    assert [m["id"] for m in handed(s)] == ["11-0"]


def test_live_messages_wait_while_the_channel_catches_up() -> None:
    s = session()
    s.last["c:a"] = (0, 0)
    s.catching["c:a"] = []
    s.offer(frame("c:a", 3))
    assert handed(s) == []
    assert [f.id for f in s.catching["c:a"]] == [(3, 0)]


def test_a_full_queue_drops_the_client_with_a_reason() -> None:
    async def scenario() -> Session:
        s = session(queue_size=2)
        s.last["c:a"] = (0, 0)
        for ms in range(1, 5):
            s.offer(frame("c:a", ms))
        await asyncio.sleep(0.01)  # the close runs in the background
        return s

    s = asyncio.run(scenario())
    assert s.closed
    code, reason = s.ws.closed  # type: ignore[attr-defined]
    assert code == SLOW_CLOSE_CODE and "resume" in reason
    assert len(handed(s)) == 2


def test_messages_held_back_count_against_the_queue_over_all_catching_channels() -> None:
    async def scenario() -> Session:
        s = session(queue_size=3)
        for channel in ("c:a", "c:b"):
            s.last[channel] = (0, 0)
            s.catching[channel] = []
        for ms in (1, 2):  # four held back in all, two per channel
            s.offer(frame("c:a", ms))
            s.offer(frame("c:b", ms))
        await asyncio.sleep(0.01)  # the close runs in the background
        return s

    s = asyncio.run(scenario())
    assert s.closed
    assert s.ws.closed[0] == SLOW_CLOSE_CODE  # type: ignore[attr-defined]
    assert s.held == 3


def test_a_channel_that_caught_up_hands_back_what_was_held_and_frees_the_bound() -> None:
    s = session(queue_size=3)
    s.last["c:a"] = (0, 0)
    s.catching["c:a"] = []
    for ms in (1, 2, 3):
        s.offer(frame("c:a", ms))
    assert [f.id for f in s.release("c:a")] == [(1, 0), (2, 0), (3, 0)]
    assert (s.held, s.catching, s.closed) == (0, {}, False)
    assert s.release("c:a") == []


def xinfo(added: int, length: int, first: str | None, last: str, deleted: str = "0-0") -> dict:
    """The fields of XINFO STREAM that tell what a stream lost, as redis-py returns them."""
    return {
        "length": length,
        "entries-added": added,
        "max-deleted-entry-id": deleted.encode(),
        "last-generated-id": last.encode(),
        "first-entry": (first.encode(), {b"p": b"{}"}) if first else None,
    }


def test_a_stream_never_trimmed_lost_nothing_whatever_the_id() -> None:
    info = xinfo(added=5, length=5, first="10-0", last="14-0")
    assert not lost_after(info, (3, 0))  # an id before the stream began: nothing was there
    assert not lost_after(info, (12, 0))


def test_a_stream_trimmed_past_an_id_may_have_lost_what_followed_it() -> None:
    # Redis 7 leaves max-deleted-entry-id at 0-0 when MAXLEN trims: the first entry left
    # and the count of entries ever added tell it.
    info = xinfo(added=30, length=10, first="20-0", last="29-0")
    assert lost_after(info, (5, 0))
    assert lost_after(info, (19, 0))  # it cannot tell whether 19 was the last one trimmed
    assert not lost_after(info, (20, 0))  # still there: nothing after it was trimmed
    assert not lost_after(info, (25, 0))
    emptied = xinfo(added=30, length=0, first=None, last="29-0")
    assert lost_after(emptied, (25, 0)) and not lost_after(emptied, (29, 0))


def test_an_id_seen_in_a_stream_that_now_starts_after_it_was_in_a_lost_stream() -> None:
    """Redis lost its data and the stream began again: nothing trimmed, yet the client's
    (or the gateway's) id came from the stream before. Told nothing, the client missed
    every message between its id and the loss."""
    info = xinfo(added=5, length=5, first="10-0", last="14-0")
    assert lost_after(info, (3, 0), seen=True)
    assert not lost_after(info, (3, 0))  # an id chosen (from): nothing was there before
    assert not lost_after(info, (10, 0), seen=True)  # still there
    assert not lost_after(info, (12, 0), seen=True)


def test_entries_deleted_one_by_one_after_an_id_are_lost() -> None:
    info = xinfo(added=10, length=9, first="0-1", last="9-0", deleted="7-0")
    assert lost_after(info, (6, 0)) and not lost_after(info, (7, 0))


def test_without_the_counts_of_redis_7_nothing_can_be_told() -> None:
    info = xinfo(added=30, length=10, first="20-0", last="29-0")
    del info["entries-added"], info["max-deleted-entry-id"]
    assert not lost_after(info, (5, 0))
