"""The worker itself goes down (SIGKILL) while the source keeps changing.

With watchdogs running (two ``cdc-cache watchdog`` processes), within the lag SLO + mode
window + a margin the mode is ``ttl`` (cause ``worker_down``) and every managed key lives
at most the fallback TTL; once the worker is back and caught up the mode returns to
``cdc``, decided by the worker. Without a watchdog the mode hash keeps saying ``cdc`` with
the keys' long TTLs (what the watchdog is for), and ``CacheAside`` still caps its fills
because the hash is stale (unless that check is turned off).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from cdc_cache.aside.cache_aside import CacheAside
from cdc_cache.core.keys import ns
from cdc_cache.tools.devstack.process import free_port, port_open
from tests.integration.fixtures_redis import RedisTarget
from tests.integration.probes import metric
from tests.integration.services import Service, worker
from tests.integration.topics import unique_topic
from tests.integration.waiting import wait_until
from tests.workload import Workload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLO_S, RECOVER_S, WINDOW_S, FALLBACK_TTL_S = 3.0, 2.0, 2.0, 5.0
# Beyond SLO + window: up to a watchdog tick to see the last beat, one to act, and the
# SCAN + PEXPIRE of the keys, on a loaded machine.
MARGIN_S = 5.0
FALLBACK_MS = int(FALLBACK_TTL_S * 1000)
WORKER_ENV = {
    "CDC_CACHE_LAG_SLO_S": str(SLO_S),
    "CDC_CACHE_LAG_RECOVER_S": str(RECOVER_S),
    "CDC_CACHE_MODE_WINDOW_S": str(WINDOW_S),
    "CDC_CACHE_FALLBACK_TTL_S": str(FALLBACK_TTL_S),
}
APP_KEYS = [f"sku:{i}:availability" for i in range(20)]  # filled by applications


class Source:
    """Keeps changing rows (ten transactions a second, committed now) until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self._workload = Workload(seed=28, topic=topic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Source:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._producer.flush(10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._workload.ts_ms = int(time.time() * 1000)
            for message in self._workload.transactions(1)[0]:
                self._producer.produce(message.topic, key=message.key, value=message.value)
            self._producer.poll(0)


def managed_ttls(client: Any) -> dict[str, int]:
    """Every key under the rules' prefixes with its PTTL (-1: none; gone keys left out)."""
    found = {}
    for pattern in ("stock:*", "sku:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            ttl = client.pttl(key)
            if ttl != -2:
                found[key.decode()] = ttl
    return found


def mode_of(client: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(ns().mode).items()}


@pytest.fixture
def running(broker: Any, redis_target: RedisTarget, tmp_path: Path) -> Iterator[Service]:
    """A worker on a source that keeps changing, in ``cdc`` mode with keys cached."""
    topic = unique_topic()
    broker.create_topics({topic: 1})
    service = worker(tmp_path, broker.bootstrap, redis_target.url, [topic], env=WORKER_ENV)
    client = redis_target.client
    for key in APP_KEYS:
        client.set(key, b"1", px=3_600_000)
    with Source(broker.bootstrap, topic):
        service.start()
        try:
            wait_until(
                "rows cached", lambda: len(managed_ttls(client)) > 30, alive=[service], interval=0.2
            )
            wait_until(
                "cdc mode",
                lambda: mode_of(client).get("mode") == "cdc",
                alive=[service],
                interval=0.2,
            )
            assert mode_of(client)["writer"] == "worker"
            assert min(managed_ttls(client).values()) > FALLBACK_MS
            yield service
        finally:
            service.stop()


def watchdog(tmp_path: Path, redis_url: str, name: str) -> tuple[Service, int]:
    port = free_port()
    argv = [sys.executable, "-m", "cdc_cache", "watchdog", "--redis-url", redis_url,
            "--port", str(port)]  # fmt: skip
    return Service(argv, tmp_path / f"{name}.log"), port


def test_a_killed_worker_falls_back_through_the_watchdog_and_returns_to_cdc(
    running: Service, redis_target: RedisTarget, tmp_path: Path
) -> None:
    client = redis_target.client
    dogs = [watchdog(tmp_path, redis_target.url, f"watchdog-{i}") for i in range(2)]
    for dog, _ in dogs:
        dog.start()
    services = [dog for dog, _ in dogs]
    try:
        wait_until(
            "watchdog ports", lambda: all(port_open(port) for _, port in dogs), 30, alive=services
        )
        wait_until(
            "one watchdog holds the lock",
            lambda: sum(metric(port, "cdc_cache_watchdog_leader") for _, port in dogs) == 1,
            30,
            alive=services,
        )
        running.kill()
        killed = time.monotonic()
        bound = SLO_S + WINDOW_S + MARGIN_S
        to_ttl = wait_until(
            "ttl mode, cause worker_down",
            lambda: (
                (mode_of(client).get("mode"), mode_of(client).get("cause"))
                == ("ttl", "worker_down")
            ),
            bound,
            alive=services,
        )
        wait_until(
            "every managed key at most the fallback TTL",
            lambda: all(0 < ttl <= FALLBACK_MS for ttl in managed_ttls(client).values()),
            bound - (time.monotonic() - killed),
            alive=services,
        )
        done = time.monotonic() - killed
        print(
            f"SIGKILL -> ttl mode {to_ttl:.1f}s, -> every key capped {done:.1f}s (bound {bound}s)"
        )
        assert mode_of(client)["writer"] == "watchdog"
        assert sum(metric(port, "cdc_cache_watchdog_takeovers_total") for _, port in dogs) == 1
        wait_until(
            "every watchdog sees the worker down",
            lambda: all(metric(port, "cdc_cache_watchdog_worker_up") == 0 for _, port in dogs),
            5,
            alive=services,
        )

        running.start()  # the worker comes back, catches up, and decides again
        back = time.monotonic()
        wait_until(
            "worker decides again",
            lambda: mode_of(client).get("writer") == "worker",
            60,
            alive=[running],
        )
        assert mode_of(client)["mode"] == "ttl"  # not cdc before its lag was low for a window
        wait_until(
            "cdc mode, recovered",
            lambda: (
                (mode_of(client).get("mode"), mode_of(client).get("cause")) == ("cdc", "recovered")
            ),
            60,
            alive=services,
        )
        print(f"restart -> cdc {time.monotonic() - back:.1f}s")
        for _ in range(15):  # the watchdogs stepped back: the worker's record stays
            assert mode_of(client)["writer"] == "worker"
            time.sleep(0.2)
        wait_until(
            "every watchdog sees the worker up",
            lambda: all(metric(port, "cdc_cache_watchdog_worker_up") == 1 for _, port in dogs),
            5,
            alive=services,
        )
        for dog in services:
            assert dog.terminate() == 0, dog.tail()
    finally:
        for dog in services:
            dog.stop()


def test_without_a_watchdog_the_hash_stays_cdc_but_cache_aside_caps_its_fills(
    running: Service, redis_target: RedisTarget
) -> None:
    client = redis_target.client
    running.kill()
    time.sleep(SLO_S + WINDOW_S + MARGIN_S)
    # What the watchdog is for: nothing switched, the cache still trusts invalidations.
    left = mode_of(client)
    assert (left["mode"], left["writer"]) == ("cdc", "worker")
    assert time.time() * 1000 - int(left["updated_ms"]) > (SLO_S + WINDOW_S) * 1000
    assert min(managed_ttls(client).values()) > FALLBACK_MS

    def fill(cache: CacheAside, key: str) -> int:
        assert cache.get(key, lambda: b'{"qty": 1}') == b'{"qty": 1}'
        return int(client.pttl(key))

    capped = CacheAside(client, ttl_ms=3_600_000)
    assert 0 < fill(capped, "stock:app:1") <= FALLBACK_MS
    trusting = CacheAside(client, ttl_ms=3_600_000, stale_after_ms=None)  # the check off
    assert fill(trusting, "stock:app:2") > FALLBACK_MS
