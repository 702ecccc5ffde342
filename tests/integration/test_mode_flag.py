"""The operator flag: a forced mode is not lost unseen, and a forced cdc says what it overrides.

A forced ``ttl`` whose key vanished (Redis restarted empty, the key evicted or deleted)
used to read as ``auto``, and the cache went back to ``cdc`` with nobody told; a forced
``cdc`` set aside active holds and a lag calling for ``ttl`` without a word. The runtime
and the watchdog are ticked by hand against a real Redis.
"""

from __future__ import annotations

import logging
import time

import orjson
import pytest
from click.testing import CliRunner
from redis import Redis

from cdc_cache.cli import main
from cdc_cache.core import metrics
from cdc_cache.fallback.store import ModeStore
from cdc_cache.fallback.watchdog import Watchdog
from cdc_cache.mode.controller import Cause, Flag, Mode, ModeState
from tests.integration.test_mode_shortening import FALLBACK_MS, leader

pytestmark = pytest.mark.integration


def mode_get(client: Redis) -> dict[str, object]:
    kwargs = client.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/0"
    result = CliRunner().invoke(main, ["mode", "get", "--redis-url", url, "--json"])
    assert result.exit_code == 0, result.output
    shown: dict[str, object] = orjson.loads(result.stdout)
    return shown


def test_a_forced_ttl_whose_key_vanished_stays_in_force_until_an_operator_sets_the_flag(
    redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = ModeStore(redis_client)
    now = [1000.0]
    store.set_flag(Flag.TTL)
    runtime = leader(redis_client, now)
    try:
        runtime.start()
        runtime.tick()
        assert runtime.view()["mode"] == "ttl"
        redis_client.flushall()  # Redis restarted empty
        now[0] += 1
        with caplog.at_level(logging.ERROR, logger="cdc_cache.mode"):
            runtime.tick()
        view = runtime.view()
        assert (view["mode"], view["flag"], view["flag_lost"]) == ("ttl", "ttl", True)
        assert metrics.MODE_FLAG_LOST._value.get() == 1
        assert any("flag vanished" in r.getMessage() for r in caplog.records)
        assert mode_get(redis_client)["flag_lost"] is True
    finally:
        runtime.close()

    restarted = leader(redis_client, now)  # the hash it published remembers the flag
    try:
        restarted.start()
        now[0] += 1
        restarted.tick()
        assert (restarted.view()["mode"], restarted.view()["flag_lost"]) == ("ttl", True)
        store.set_flag(Flag.AUTO)  # what `cdc-cache mode set auto` writes
        now[0] += 1
        restarted.tick()
        view = restarted.view()  # the lag decides again (from the ttl a restart resumes)
        assert (view["flag"], view["flag_lost"], view["cause"]) == ("auto", False, "start")
        assert metrics.MODE_FLAG_LOST._value.get() == 0
        assert "flag_lost" not in mode_get(redis_client)
    finally:
        restarted.close()


def test_a_forced_cdc_over_an_active_hold_or_a_lag_is_exported_and_logged(
    redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    over_holds = metrics.MODE_FORCED_OVERRIDE.labels("holds")
    over_lag = metrics.MODE_FORCED_OVERRIDE.labels("lag")
    now = [1000.0]
    runtime = leader(redis_client, now)
    ModeStore(redis_client).set_flag(Flag.CDC)
    try:
        runtime.tick()
        assert over_holds._value.get() == over_lag._value.get() == 0
        runtime.holds.hold(Cause.LINEAGE, "db1", "db1: a source log it cannot order")
        now[0] += 1
        with caplog.at_level(logging.ERROR, logger="cdc_cache.mode"):
            runtime.tick()
        assert runtime.view()["mode"] == "cdc"
        assert (over_holds._value.get(), over_lag._value.get()) == (1, 0)
        assert runtime.view()["overrides"] == ["holds"]
        assert any("overrides evidence" in r.getMessage() for r in caplog.records)
        now[0] += 10  # the partition's last change is 11 s old: stalled past the 3 s SLO
        runtime.tick()
        now[0] += 3  # for the 2 s window
        runtime.tick()
        assert (over_holds._value.get(), over_lag._value.get()) == (1, 1)
        runtime.holds.clear(Cause.LINEAGE, "db1")
        ModeStore(redis_client).set_flag(Flag.AUTO)
        now[0] += 1
        runtime.tick()
        assert runtime.view()["mode"] == "ttl"
        assert over_holds._value.get() == over_lag._value.get() == 0
    finally:
        runtime.close()


def test_a_watchdog_standing_in_under_a_forced_cdc_exports_the_hold_it_overrides(
    redis_client: Redis,
) -> None:
    now_ms = int(time.time() * 1000)
    store = ModeStore(redis_client)
    store.publish(
        ModeState.initial(now_ms), Flag.AUTO, 0.2, now_ms, FALLBACK_MS,
        stale_after_ms=2_000, prefixes=["stock:"],
    )  # fmt: skip
    store.set_flag(Flag.CDC)
    clock = [0.0]
    dog = Watchdog(redis_client, clock=lambda: clock[0])
    over_holds = metrics.MODE_FORCED_OVERRIDE.labels("holds")
    try:
        dog.tick()
        clock[0] += 3  # the worker's heartbeat stood still past its bound
        dog.tick()
        assert dog.acting and store.record()["mode"] == Mode.CDC.value
        assert over_holds._value.get() == 1
        now_ms = int(time.time() * 1000)
        store.publish(ModeState.initial(now_ms), Flag.CDC, 0.2, now_ms, FALLBACK_MS)
        clock[0] += 1
        dog.tick()  # the worker is back: the watchdog steps back
        assert not dog.acting and over_holds._value.get() == 0
    finally:
        dog.close()
