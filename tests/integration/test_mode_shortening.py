"""While the cache is in ttl mode, the leader keeps the managed keys at the fallback TTL.

Not only on the tick that switched: a leader restarted in ttl mode, a switch whose write
Redis refused, and a shortening Redis cut short all leave keys with their long TTL, each
stale for that long after the changes that never come. The watchdog standing in for a
worker that is down does the same. The runtime is ticked by hand
against a real Redis; an ACL user whose permissions change between ticks makes Redis
refuse what the scenario needs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from cdc_cache_client.cache_aside import MODE_GRACE_S
from redis import Redis

from cdc_cache.aside.cache_aside import CacheAside
from cdc_cache.core import metrics
from cdc_cache.fallback.runtime import ModeRuntime
from cdc_cache.fallback.store import ModeStore
from cdc_cache.fallback.watchdog import Watchdog
from cdc_cache.mode.controller import Cause, Flag, Mode, ModeConfig, ModeState
from cdc_cache.mode.lag import LagTracker
from tests.integration.fixtures_redis import AnyRedis
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

FALLBACK_MS, LONG_MS = 5_000, 3_600_000
KEYS = [f"stock:{i}:north" for i in range(50)]
PASSWORD = "mode-Pa55"


@pytest.fixture
def user(redis_client: Redis) -> Iterator[Redis]:
    """A client of an ACL user allowed everything, whose permissions a test narrows."""
    name = f"mode-{uuid.uuid4().hex[:8]}"
    redis_client.acl_setuser(
        name, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"]
    )
    kwargs = redis_client.connection_pool.connection_kwargs
    client = Redis(host=kwargs["host"], port=kwargs["port"], username=name, password=PASSWORD)
    try:
        yield client
    finally:
        client.close()
        redis_client.acl_deluser(name)


def allow(admin: Redis, client: Redis, *rules: str) -> None:
    """Change the commands ``client``'s user may run (``-evalsha``, ``+evalsha``, ...)."""
    name = client.connection_pool.connection_kwargs["username"]
    admin.acl_setuser(name, enabled=True, commands=list(rules))


def reach(admin: Redis, client: Redis, pattern: str) -> None:
    """Change the keys ``client``'s user may touch: ``cdc:*`` leaves the cache's keys out."""
    name = client.connection_pool.connection_kwargs["username"]
    admin.acl_setuser(name, enabled=True, reset_keys=True, keys=[pattern])


def cached(client: AnyRedis) -> None:
    for key in KEYS:
        client.set(key, b"row", px=LONG_MS)


def shortened(client: AnyRedis) -> bool:
    return all(0 < client.pttl(key) <= FALLBACK_MS for key in KEYS)


def leader(client: AnyRedis, now: list[float]) -> ModeRuntime:
    """A leader whose one partition is caught up; it only ticks when the test says."""
    tracker = LagTracker(lambda: now[0] * 1000)
    tracker.record("db.inventory.stock", 0, int(now[0] * 1000))
    return ModeRuntime(
        client=client, tracker=tracker, config=ModeConfig(3.0, 2.0, 2.0),
        fallback_ttl_ms=FALLBACK_MS, prefixes=["stock:"], interval_s=3600,
        clock=lambda: now[0],
    )  # fmt: skip


def test_a_leader_restarted_in_ttl_mode_gives_the_keys_the_fallback_ttl(
    redis_client: Redis,
) -> None:
    """The run before stopped mid-shortening (or before it): the keys it did not reach
    must not keep their long TTL through the ttl mode the new run resumes."""
    cached(redis_client)
    now = [1000.0]
    state = ModeState.initial(int(now[0] * 1000), Mode.TTL, Cause.LAG, "lag above the SLO")
    ModeStore(redis_client).publish(state, Flag.AUTO, 90.0, int(now[0] * 1000), FALLBACK_MS)
    runtime = leader(redis_client, now)
    runtime.start()
    try:
        now[0] += 1
        decision = runtime.tick()
        assert decision is not None and decision.mode is Mode.TTL and not decision.switched
        wait_until("the keys shortened", lambda: shortened(redis_client), 10)
    finally:
        runtime.close()


def test_a_switch_whose_write_redis_refused_is_made_on_the_next_tick(
    redis_client: Redis, user: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The switch is logged, counted and acted on once it is published, not lost with the
    tick that could not publish it."""
    cached(redis_client)
    now = [1000.0]
    runtime = leader(user, now)
    try:
        assert runtime.tick() is not None and runtime.view()["mode"] == "cdc"
        runtime.holds.hold(Cause.SOURCE_DISCONTINUITY, "t[0]", "t[0]: the topic was recreated")
        switches = metrics.MODE_SWITCHES.labels("ttl", "source_discontinuity")
        before = switches._value.get()
        allow(redis_client, user, "-evalsha", "-eval")  # the mode hash cannot be written
        now[0] += 1
        assert runtime.tick() is None
        allow(redis_client, user, "+evalsha", "+eval")
        now[0] += 1
        with caplog.at_level(logging.WARNING, logger="cdc_cache.mode"):
            decision = runtime.tick()
        assert decision is not None and decision.switched and decision.mode is Mode.TTL
        assert switches._value.get() == before + 1
        assert any(r.getMessage() == "cache mode switched" for r in caplog.records)
        wait_until("the keys shortened", lambda: shortened(redis_client), 10)
    finally:
        runtime.close()


def test_a_shortening_redis_refused_is_run_again_while_in_ttl_mode(
    redis_client: Redis, user: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused PEXPIREs are not a finished run: the next tick in ttl mode runs it again."""
    cached(redis_client)
    now = [1000.0]
    runtime = leader(user, now)
    caplog.set_level(logging.INFO, logger="cdc_cache.mode")
    try:
        reach(redis_client, user, "cdc:*")  # PEXPIRE of the cache's keys refused
        runtime.holds.hold(Cause.SOURCE_DISCONTINUITY, "t[0]", "t[0]: the topic was recreated")
        decision = runtime.tick()
        assert decision is not None and decision.mode is Mode.TTL
        wait_until(
            "the first run over",
            lambda: any("fallback TTL" in r.getMessage() for r in caplog.records),
            10,
        )
        assert not any(0 < redis_client.pttl(key) <= FALLBACK_MS for key in KEYS)
        reach(redis_client, user, "*")
        now[0] += 1
        runtime.tick()
        wait_until("the keys shortened", lambda: shortened(redis_client), 10)
    finally:
        runtime.close()


def test_a_finished_shortening_is_not_run_again_until_ttl_mode_is_entered_again(
    redis_client: Redis,
) -> None:
    cached(redis_client)
    now = [1000.0]
    runtime = leader(redis_client, now)
    try:
        runtime.holds.hold(Cause.SOURCE_DISCONTINUITY, "t[0]", "t[0]: the topic was recreated")
        runtime.tick()
        wait_until("the keys shortened", lambda: shortened(redis_client), 10)
        cached(redis_client)  # written again with the long TTL (as no writer would now)
        for _ in range(3):
            now[0] += 1
            runtime.tick()
        assert all(redis_client.pttl(key) > FALLBACK_MS for key in KEYS)

        runtime.holds.clear(Cause.SOURCE_DISCONTINUITY, "t[0]")
        now[0] += 1
        runtime.tick()
        assert runtime.view()["mode"] == "cdc"
        runtime.holds.hold(Cause.SOURCE_DISCONTINUITY, "t[0]", "t[0]: recreated again")
        now[0] += 1
        runtime.tick()
        wait_until("the keys shortened again", lambda: shortened(redis_client), 10)
    finally:
        runtime.close()


def test_a_watchdog_runs_a_shortening_redis_refused_again_while_it_stands_in(
    redis_client: Redis, user: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cached(redis_client)
    now_ms = int(time.time() * 1000)
    ModeStore(redis_client).publish(
        ModeState.initial(now_ms), Flag.AUTO, 0.2, now_ms, FALLBACK_MS,
        stale_after_ms=2_000, prefixes=["stock:"],
    )  # fmt: skip
    clock = [0.0]
    dog = Watchdog(user, clock=lambda: clock[0])
    caplog.set_level(logging.INFO, logger="cdc_cache.mode")
    try:
        reach(redis_client, user, "cdc:*")  # PEXPIRE of the cache's keys refused
        dog.tick()
        clock[0] += 3  # the worker's heartbeat stood still past its bound
        dog.tick()
        assert dog.acting
        wait_until(
            "the first run over",
            lambda: any("fallback TTL" in r.getMessage() for r in caplog.records),
            10,
        )
        reach(redis_client, user, "*")
        clock[0] += 1
        dog.tick()
        wait_until("the keys shortened", lambda: shortened(redis_client), 10)
    finally:
        dog.close()


def test_a_fill_that_acted_on_cdc_after_the_run_passed_its_key_is_shortened_after_the_grace(
    any_redis: AnyRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """An application read ``cdc`` just before the switch and fills once the run is over:
    its key keeps the long TTL until the pass the grace after the switch shortens it."""
    cached(any_redis)
    now = [1000.0]
    runtime = leader(any_redis, now)
    app = CacheAside(any_redis, ttl_ms=LONG_MS, mode_refresh_s=3600, wall_clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="cdc_cache.mode")
    try:
        runtime.tick()
        assert app.mode().name == "cdc"  # and kept for the refresh period
        runtime.holds.hold(Cause.SOURCE_DISCONTINUITY, "t[0]", "t[0]: the topic was recreated")
        now[0] += 1
        runtime.tick()
        wait_until(
            "the first run over",
            lambda: any("given the fallback TTL" in r.getMessage() for r in caplog.records),
            10,
        )
        late = "stock:late:north"
        assert app.get(late, lambda: b"row") == b"row"
        assert any_redis.pttl(late) > FALLBACK_MS  # landed after the run passed it
        now[0] += 1
        runtime.tick()  # within the grace: no run yet
        now[0] += MODE_GRACE_S
        runtime.tick()
        wait_until("the late fill shortened", lambda: 0 < any_redis.pttl(late) <= FALLBACK_MS, 10)
    finally:
        runtime.close()


def test_a_fill_returning_later_than_the_grace_after_its_mode_read_checks_the_mode_again(
    any_redis: AnyRedis,
) -> None:
    """The worker's pass after the grace may have gone by before such a fill landed."""
    clock = [0.0]
    app = CacheAside(any_redis, ttl_ms=LONG_MS, mode_refresh_s=3600, clock=lambda: clock[0])
    store = ModeStore(any_redis)
    now_ms = int(time.time() * 1000)
    store.publish(ModeState.initial(now_ms), Flag.AUTO, 0.1, now_ms, FALLBACK_MS)
    assert app.mode().name == "cdc"
    state = ModeState.initial(now_ms, Mode.TTL, Cause.LAG, "lag above the SLO")
    store.publish(state, Flag.AUTO, 90.0, now_ms, FALLBACK_MS)

    def slow_load() -> bytes:
        clock[0] += MODE_GRACE_S + 1
        return b"row"

    assert app.get("stock:slow:north", slow_load) == b"row"
    assert 0 < any_redis.pttl("stock:slow:north") <= FALLBACK_MS
    clock[0] += 1
    assert app.get("stock:quick:north", lambda: b"row") == b"row"  # the mode read again: ttl
    assert 0 < any_redis.pttl("stock:quick:north") <= FALLBACK_MS
