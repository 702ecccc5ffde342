"""The watchdog against a real Redis (single server and Cluster), with its clock in the
test's hands: it takes over from a silent worker, shortens the managed keys' TTLs, never
overwrites a worker that wrote again, and only one of several instances acts."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.aside.cache_aside import CacheAside
from cdc_cache.cli import main
from cdc_cache.core import metrics
from cdc_cache.core.keys import ns
from cdc_cache.fallback.runtime import ModeRuntime
from cdc_cache.fallback.store import ModeStore
from cdc_cache.fallback.watchdog import Watchdog
from cdc_cache.mode.controller import Cause, Flag, Hold, ModeConfig, ModeState
from cdc_cache.mode.lag import LagTracker
from cdc_cache.tools.devstack.process import free_port
from tests.integration.services import Service
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

FALLBACK_MS, BOUND_MS, LONG_MS = 5_000, 5_000, 3_600_000
PREFIXES = ["stock:", "sku:"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker_writes(
    client: Any, tables: tuple[Hold, ...] = (), ttl_prefixes: Iterable[str] = ()
) -> None:
    """The worker's leader publishing the mode, as it does every second."""
    now_ms = int(time.time() * 1000)
    ModeStore(client).publish(
        ModeState.initial(now_ms), Flag.AUTO, 0.2, now_ms, FALLBACK_MS, holds=tables,
        ttl_prefixes=ttl_prefixes, stale_after_ms=BOUND_MS, prefixes=PREFIXES,
    )  # fmt: skip


def record(client: Any) -> dict[str, str]:
    return ModeStore(client).record()


def taken_over_in_forced_cdc(
    client: Any, make: Callable[[Clock], Watchdog]
) -> tuple[Clock, Watchdog, dict[str, str]]:
    """The operator forces cdc, then a watchdog finds the worker's heartbeat still."""
    ModeStore(client).set_flag(Flag.CDC)
    clock = Clock()
    dog = make(clock)
    dog.tick()
    clock.now += 6
    dog.tick()
    taken = record(client)
    assert (taken["mode"], taken["cause"], taken["writer"]) == ("cdc", "forced", "watchdog")
    return clock, dog, taken


@pytest.fixture
def watchdogs(any_redis: Any) -> Iterator[Callable[[Clock], Watchdog]]:
    made: list[Watchdog] = []

    def make(clock: Clock) -> Watchdog:
        made.append(Watchdog(any_redis, clock=clock))
        return made[-1]

    yield make
    for dog in made:
        dog.close()


def test_a_silent_worker_is_replaced_until_it_writes_again(any_redis: Any, watchdogs: Any) -> None:
    worker_writes(any_redis)
    for i in range(300):
        any_redis.set(f"stock:{i}:north", b"{}", px=LONG_MS)
    any_redis.set("sku:7:availability", b"1")  # an application's fill without a TTL
    any_redis.set("other:1", b"x", px=LONG_MS)  # no rule manages it
    takeovers = metrics.WATCHDOG_TAKEOVERS._value.get()
    clock = Clock()
    dog = watchdogs(clock)

    dog.tick()
    clock.now += BOUND_MS / 1000  # exactly the bound: not yet
    dog.tick()
    assert not dog.acting and record(any_redis)["writer"] == "worker"

    clock.now += 0.5
    dog.tick()
    assert dog.acting
    taken = record(any_redis)
    assert (taken["mode"], taken["cause"], taken["writer"]) == ("ttl", "worker_down", "watchdog")
    assert taken["holds"] == '["worker_down"]' and "no worker heartbeat" in taken["reason"]
    assert taken["fallback_ttl_ms"] == str(FALLBACK_MS)
    assert metrics.WATCHDOG_TAKEOVERS._value.get() == takeovers + 1
    assert metrics.MODE_HOLDS.labels("worker_down")._value.get() == 1
    wait_until(
        "managed keys given the fallback TTL",
        lambda: all(
            0 < any_redis.pttl(k) <= FALLBACK_MS
            for k in [f"stock:{i}:north" for i in range(300)] + ["sku:7:availability"]
        ),
        10,
        interval=0.05,
    )
    assert any_redis.pttl("other:1") > FALLBACK_MS

    clock.now += 1  # it keeps the record fresh while it decides
    dog.tick()
    assert int(record(any_redis)["updated_ms"]) >= int(taken["updated_ms"])

    worker_writes(any_redis)  # the worker is back
    clock.now += 1
    dog.tick()
    assert not dog.acting
    assert record(any_redis)["writer"] == "worker"
    assert metrics.MODE_HOLDS.labels("worker_down")._value.get() == 0


def test_a_returning_worker_is_never_overwritten(any_redis: Any) -> None:
    worker_writes(any_redis)
    store = ModeStore(any_redis)
    seen = store.record()["updated_ms"]
    time.sleep(0.002)
    worker_writes(any_redis)  # the worker writes between the watchdog's read and its write
    state = ModeState.initial(0)
    assert not store.take_over(state, Flag.AUTO, 1, FALLBACK_MS, holds=(), seen_updated_ms=seen)
    assert record(any_redis)["writer"] == "worker"
    current = store.record()["updated_ms"]
    assert store.take_over(state, Flag.AUTO, 1, FALLBACK_MS, holds=(), seen_updated_ms=current)
    assert record(any_redis)["writer"] == "watchdog"


def test_of_two_watchdogs_one_acts_and_the_other_takes_over_when_it_stops(
    any_redis: Any, watchdogs: Any
) -> None:
    worker_writes(any_redis)
    clock = Clock()
    first, second = watchdogs(clock), watchdogs(clock)
    takeovers = metrics.WATCHDOG_TAKEOVERS._value.get()
    for _ in range(8):
        first.tick()
        second.tick()
        clock.now += 1
    assert [first.acting, second.acting] == [True, False]
    assert metrics.WATCHDOG_TAKEOVERS._value.get() == takeovers + 1
    assert first.view()["leader"] and not second.view()["leader"]

    first.close()  # hands the lock over
    second.tick()
    assert second.acting  # the record says a watchdog found the worker down: at once
    assert record(any_redis)["writer"] == "watchdog"


def test_the_operator_flag_still_wins_over_the_watchdog(any_redis: Any, watchdogs: Any) -> None:
    worker_writes(any_redis)
    any_redis.set("stock:1:north", b"{}", px=LONG_MS)
    clock, dog, taken = taken_over_in_forced_cdc(any_redis, watchdogs)
    assert taken["holds"] == '["worker_down"]'
    time.sleep(0.5)
    assert any_redis.pttl("stock:1:north") > FALLBACK_MS  # forced cdc: nothing shortened
    ModeStore(any_redis).set_flag(Flag.AUTO)
    clock.now += 1
    dog.tick()
    assert any_redis.hget(ns().mode, "mode") == b"ttl"
    wait_until(
        "shortened", lambda: 0 < any_redis.pttl("stock:1:north") <= FALLBACK_MS, 10, interval=0.05
    )


def test_tables_the_worker_left_in_ttl_stay_so_while_the_watchdog_decides(
    any_redis: Any, watchdogs: Any
) -> None:
    """Under a forced cdc only the tables' own caps bound their keys: the watchdog must
    carry them, for applications and for the worker's other processes."""
    failing = Hold(Cause.TABLE_FAILING, "5 changes failed within 60s", "db.items")
    worker_writes(any_redis, tables=(failing,), ttl_prefixes=["item:"])
    _, _, taken = taken_over_in_forced_cdc(any_redis, watchdogs)
    assert orjson.loads(taken["tables"]) == {"db.items": failing.reason}
    assert orjson.loads(taken["ttl_prefixes"]) == ["item:"]
    assert orjson.loads(taken["holds"]) == ["table_failing:db.items", "worker_down"]

    cache = CacheAside(any_redis, ttl_ms=LONG_MS)
    cache.get("item:1", lambda: b"{}")
    cache.get("stock:1:north", lambda: b"{}")
    assert 0 < any_redis.pttl("item:1") <= FALLBACK_MS
    assert any_redis.pttl("stock:1:north") > FALLBACK_MS

    follower = ModeRuntime(
        client=any_redis, tracker=LagTracker(lambda: time.time() * 1000),
        config=ModeConfig(3.0, 2.0, 2.0),
        fallback_ttl_ms=FALLBACK_MS, prefixes=PREFIXES, process=1, processes=2,
        table_prefixes={"db.items": ["item:"]},
    )  # fmt: skip
    try:
        follower.tick()
        assert follower.tables.caps() == {"db.items": FALLBACK_MS}
    finally:
        follower.close()


def test_the_gateway_runs_a_watchdog(tmp_path: Path, redis_server: Any, redis_client: Any) -> None:
    worker_writes(redis_client)
    redis_client.set("stock:1:north", b"{}", px=LONG_MS)
    port = free_port()
    (tmp_path / "secret").write_text("s3cret")
    gateway = Service(
        [
            sys.executable, "-m", "cdc_cache", "gateway", "--redis-url", redis_server.address(),
            "--port", str(port), "--secret-file", str(tmp_path / "secret"),
        ],
        tmp_path / "gateway.log",
        {"CDC_CACHE_GATEWAY_WATCHDOG_DOWN_AFTER_S": "1"},
    )  # fmt: skip
    gateway.start()
    try:
        wait_until(
            "ttl mode",
            lambda: record(redis_client).get("cause") == "worker_down",
            30,
            interval=0.05,
        )
        wait_until(
            "shortened",
            lambda: 0 < redis_client.pttl("stock:1:north") <= FALLBACK_MS,
            10,
            interval=0.05,
        )
        health = orjson.loads(urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        assert health["watchdog"]["worker"] == "down" and health["watchdog"]["acting"]
        shown = CliRunner().invoke(main, ["mode", "get", "--redis-url", redis_server.address()])
        assert "(worker_down)" in shown.output and "writer: watchdog" in shown.output
        assert gateway.terminate() == 0, gateway.tail()
        assert redis_client.exists(ns().watchdog_lock) == 0  # handed over on the way out
    finally:
        gateway.stop()


def test_a_worker_that_finds_the_watchdogs_record_decides_again_from_ttl(
    any_redis: Any, watchdogs: Any
) -> None:
    """A worker that lived on but could not write (cut off from Redis) must not return to
    cdc at once: changes may have gone unapplied while the watchdog stood in."""
    now = [time.time()]
    tracker = LagTracker(lambda: now[0] * 1000)
    tracker.record("t", 0, int(now[0] * 1000))  # caught up: lag 0
    runtime = ModeRuntime(
        client=any_redis, tracker=tracker, config=ModeConfig(3.0, 2.0, 2.0),
        fallback_ttl_ms=FALLBACK_MS, prefixes=PREFIXES, clock=lambda: now[0],
    )  # fmt: skip
    assert runtime.tick() is not None and record(any_redis)["mode"] == "cdc"
    clock = Clock()
    dog = watchdogs(clock)
    dog.tick()
    clock.now += 6  # the worker writes nothing meanwhile
    dog.tick()
    assert record(any_redis)["writer"] == "watchdog"

    now[0] += 1
    tracker.record("t", 0, int(now[0] * 1000))
    runtime.tick()
    back = record(any_redis)
    assert (back["writer"], back["mode"], back["cause"]) == ("worker", "ttl", "start")
    assert "watchdog" in back["reason"]
    clock.now += 1
    dog.tick()
    assert not dog.acting
    for _ in range(3):  # low lag for the window (2 s), then cdc
        now[0] += 1.1
        tracker.record("t", 0, int(now[0] * 1000))
        runtime.tick()
    assert (record(any_redis)["mode"], record(any_redis)["cause"]) == ("cdc", "recovered")


def test_junk_in_the_mode_keys_is_named_never_taken_for_a_worker_state(
    any_redis: Any, watchdogs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    any_redis.set(ns().mode, b"not a hash")
    clock = Clock()
    dog = watchdogs(clock)
    for _ in range(3):
        dog.tick()
        clock.now += 10
    assert not dog.acting and dog.view()["worker"] == "unknown"
    assert math.isnan(metrics.WATCHDOG_WORKER_UP._value.get())
    named = [r for r in caplog.records if "a mode key cannot be read" in r.getMessage()]
    assert len(named) == 1 and "cdc:mode holds another type" in named[0].getMessage()

    any_redis.delete(ns().mode)
    worker_writes(any_redis)
    any_redis.set("cdc:mode:flag", b"sometimes")  # an unreadable flag counts as auto
    dog.tick()
    clock.now += 6
    dog.tick()
    assert dog.acting and record(any_redis)["mode"] == "ttl"
