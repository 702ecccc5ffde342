"""New topics restart the flow onto the new list; a topic gone, or no answer, does not."""

from __future__ import annotations

import threading

from cdc_cache.app.topic_watch import TopicWatch


def watch_of(listing: list[list[str] | None]) -> TopicWatch:
    return TopicWatch(lambda: listing[0], interval_s=0)


def test_a_new_topic_asks_the_flow_to_restart_onto_the_new_list() -> None:
    listing: list[list[str] | None] = [["a", "hb"]]
    watch, restart = watch_of(listing), threading.Event()
    watch.follow(["a", "hb"], restart)
    assert not watch.check() and not restart.is_set()
    listing[0] = ["a", "b", "hb"]
    assert watch.check() and restart.is_set()
    assert watch.wanted() == ["a", "b", "hb"]
    assert not watch.check(), "asked once per flow"


def test_a_topic_gone_or_brokers_silent_leave_the_flow_running() -> None:
    listing: list[list[str] | None] = [["a"]]
    watch, restart = watch_of(listing), threading.Event()
    watch.follow(["a", "b"], restart)
    assert not watch.check()
    listing[0] = None
    assert not watch.check()
    assert not restart.is_set() and watch.wanted() == ["a", "b"]


def test_a_follower_lists_nothing_itself() -> None:
    listed = []
    watch = TopicWatch(lambda: listed.append(1) or ["a", "b"], interval_s=0, leader=False)
    watch.follow(["a"], threading.Event())
    assert not watch.check() and listed == []
