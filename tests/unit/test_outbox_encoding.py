"""Notifications on Redis Cluster, the pure parts: the outbox op rides with its host, in
its host's slot; outbox entries read back, grouped by channel, trimmed past what was read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import ApplyError
from cdc_cache.core.keys import key_slot, ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, Notify
from cdc_cache.sink.encoding import calls
from cdc_cache.sink.outbox import Entry, after, by_channel, entry_of

AT = SourcePosition(0, 1, 5, 0)


def test_a_notification_goes_to_its_hosts_outbox_in_the_same_call() -> None:
    ops = [DeleteKey("stock:{7}:n", AT, 1000, "t"), Notify("inventory:n", b"{}", 10)]
    (call,) = calls(ops, [0, 1], outbox=True)
    assert call.keys[3:] == (ns().outbox_key("stock:{7}:n"),)
    assert call.args[-4:] == ("O", "inventory:n", 10, b"{}")
    assert {key_slot(k) for k in call.keys} == {key_slot("stock:{7}:n")}  # one slot


def test_on_one_server_a_notification_goes_to_its_channels_stream() -> None:
    ops = [DeleteKey("stock:{7}:n", AT, 1000, "t"), Notify("inventory:n", b"{}", 10)]
    (call,) = calls(ops, [0, 1])
    assert call.keys[3] == ns().stream_key("inventory:n")
    assert call.args[-4] == "N"


@given(st.text(min_size=1, max_size=40))
def test_relay_progress_lives_in_the_slot_of_its_channels_stream(channel: str) -> None:
    assert key_slot(ns().relay_progress_key(channel)) == key_slot(ns().stream_key(channel))


def test_outbox_entries_are_read_back_and_grouped_by_channel_in_order() -> None:
    raw = [
        (b"5-0", {b"c": b"a", b"m": b"10", b"p": b"1"}),
        (b"5-1", {b"c": b"b", b"m": b"10", b"p": b"2"}),
        (b"6-0", {b"c": b"a", b"m": b"10", b"p": b"3"}),
    ]
    grouped = by_channel([entry_of(i, f) for i, f in raw])
    assert [e.payload for e in grouped["a"]] == [b"1", b"3"]
    assert grouped["b"] == [Entry(b"5-1", "b", 10, b"2")]


def test_a_malformed_outbox_entry_is_an_error_naming_it() -> None:
    with pytest.raises(ApplyError, match="5-0"):
        entry_of(b"5-0", {b"p": b"x"})


def test_the_trim_point_is_just_above_the_last_entry_read() -> None:
    assert after(b"1700000000000-0") == "1700000000000-1"
    assert after(b"7-41") == "7-42"
