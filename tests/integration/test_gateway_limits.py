"""Hostile clients against the real ``cdc-cache gateway`` process: floods of subscriptions,
many patterns, adversarial patterns on long channel names. The gateway must keep answering
everyone else (a ping round trip stays short) during and after, and refuse what is over its
limits with an ``error``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from cdc_cache.core.keys import ns
from cdc_cache.notify.tokens import MAX_PATTERNS, issue
from cdc_cache.tools.devstack.process import free_port, port_open
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.services import ROOT, Service

pytestmark = pytest.mark.integration

SECRET = "limits-secret"
# The gateway must answer a ping within this while being flooded; before the limits, 1,000
# subscribe messages blocked it for 10-24 s and 10,000 for minutes.
PING_BOUND_S = 2.0


def token(*patterns: str) -> str:
    return issue(SECRET.encode(), patterns, int(time.time()) + 600)


def add_channels(client: Any, names: list[str]) -> None:
    """Channels as the apply script leaves them: a stream each, recorded in the set."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xadd(ns().stream_key(name), {"p": orjson.dumps({"n": name})})
        pipe.sadd(ns().channels, name)
    pipe.execute()


@pytest.fixture
def gateway(tmp_path: Path, redis_server: RedisServer, redis_client: Any) -> Iterator[str]:
    """A ``cdc-cache gateway`` process with default limits; yields its WebSocket URL."""
    port = free_port()
    (tmp_path / "secret").write_text(SECRET)
    service = Service(
        [
            sys.executable, "-m", "cdc_cache", "gateway",
            "--redis-url", redis_server.address(), "--port", str(port),
            "--secret-file", str(tmp_path / "secret"),
        ],
        tmp_path / "gateway.log",
        {"CDC_CACHE_GATEWAY_DISCOVER_S": "0.2"},
    )  # fmt: skip
    service.start()
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            service.check_alive()
            assert time.monotonic() < deadline, service.tail()
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/ws"
        service.check_alive()
    finally:
        service.stop()


class Pinger:
    """A well-behaved client pinging all along from its own thread (so the test's other
    clients cannot delay it); keeps every round trip it measured."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.round_trips: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    def __enter__(self) -> Pinger:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.round_trips:
            assert self._thread.is_alive() and time.monotonic() < deadline, "no first pong"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(150)

    async def _run(self) -> None:
        async with connect(f"{self.url}?token={token('inventory:*')}") as ws:
            while not self._stop.is_set():
                started = time.monotonic()
                await ws.send(b'{"type": "ping"}')
                await frame_of(ws, "pong", timeout=120)  # pings stay within the request rate
                self.round_trips.append(time.monotonic() - started)
                await asyncio.sleep(0.15)

    def worst_since(self, index: int) -> float:
        return max(self.round_trips[index:], default=0.0)


async def frame_of(ws: ClientConnection, kind: str, timeout: float = 10) -> dict[str, Any]:
    """The next frame of ``kind`` (others in between are skipped; an error fails the test
    unless that is what is awaited)."""
    while True:
        frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame["type"] == kind:
            return frame
        assert frame["type"] != "error", frame


async def subscribe(ws: ClientConnection, *patterns: str) -> dict[str, Any]:
    await ws.send(orjson.dumps({"type": "subscribe", "channels": list(patterns)}))
    return await frame_of(ws, "subscribed")


async def until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


def test_a_subscription_flood_and_many_patterns_leave_the_gateway_responsive(
    gateway: str, redis_client: Any
) -> None:
    add_channels(redis_client, [f"inventory:w{i}" for i in range(1000)])

    async def scenario(pinger: Pinger) -> None:
        # 40 clients at the pattern limit, every pattern starting like every channel
        holders = []
        for c in range(40):
            ws = await connect(f"{gateway}?token={token('inventory:*')}")
            reply = await subscribe(ws, *(f"inventory:*-{c}-{i}" for i in range(MAX_PATTERNS)))
            assert len(reply["patterns"]) == MAX_PATTERNS
            holders.append(ws)
        await holders[0].send(orjson.dumps({"type": "subscribe", "channels": ["inventory:x*"]}))
        refused = await frame_of(holders[0], "error")
        assert refused["code"] == "too_many_patterns", refused

        # a listener that must keep getting new channels' messages
        listener = await connect(f"{gateway}?token={token('inventory:*')}")
        await subscribe(listener, "inventory:new-*")

        # 10,000 subscribe messages from one client, each a new pattern, sent at once,
        # while 2,000 new channels appear (each one looked up in the index of those 2,560
        # patterns, not compared with every pattern of every client)
        during = len(pinger.round_trips)
        codes: Counter[str] = Counter()
        async with connect(f"{gateway}?token={token('inventory:*')}") as flooder:
            for i in range(10_000):
                message = {"type": "subscribe", "channels": [f"inventory:z{i}*"]}
                await flooder.send(orjson.dumps(message))
            add_channels(redis_client, [f"inventory:new-{i}" for i in range(2000)])
            while sum(codes.values()) < 10_000:
                frame = orjson.loads(await asyncio.wait_for(flooder.recv(), 60))
                if frame["type"] == "error":
                    codes[frame["code"]] += 1
                elif frame["type"] == "subscribed":
                    codes["subscribed"] += 1
        worst_during = pinger.worst_since(during)
        assert codes["rate_limited"] > 9_000, codes
        assert codes["subscribed"] + codes["too_many_patterns"] + codes["rate_limited"] == 10_000

        message = await frame_of(listener, "message", timeout=30)
        assert message["channel"].startswith("inventory:new-")

        after = len(pinger.round_trips)
        await until(lambda: len(pinger.round_trips) > after + 10, "pings after the flood")
        print(
            f"ping round trip: worst {worst_during * 1000:.0f} ms during the flood, "
            f"{pinger.worst_since(after) * 1000:.0f} ms after; refused {dict(codes)}"
        )
        assert worst_during < PING_BOUND_S
        assert pinger.worst_since(after) < PING_BOUND_S
        for ws in [*holders, listener]:
            await ws.close()

    with Pinger(gateway) as pinger:
        asyncio.run(asyncio.wait_for(scenario(pinger), 300))


def test_adversarial_patterns_on_long_channel_names_cost_linear_time(
    gateway: str, redis_client: Any
) -> None:
    hostile = "inventory:" + "*x" * 7 + "*Q"  # minutes per channel for a backtracking regex
    long_names = [f"inventory:{'x' * 90}{i}" for i in range(20)]  # row values: ~96 chars

    async def scenario(pinger: Pinger) -> None:
        async with connect(f"{gateway}?token={token(hostile, 'inventory:*')}") as ws:
            await subscribe(ws, hostile, "inventory:*x*x*x*x*x*x*x*x*Q")
            add_channels(redis_client, [*long_names, "inventory:xxxxxxxxQ"])
            message = await frame_of(ws, "message", timeout=30)
            assert message["channel"] == "inventory:xxxxxxxxQ"  # the only one ending in Q
            too_many = "inventory:" + "*a" * 17
            await ws.send(orjson.dumps({"type": "subscribe", "channels": [too_many]}))
            error = await frame_of(ws, "error")
            assert error["code"] == "bad_request"
            assert "at most 16 are allowed" in error["message"]
        await until(lambda: len(pinger.round_trips) > 10, "pings")
        assert pinger.worst_since(0) < PING_BOUND_S

    with Pinger(gateway) as pinger:
        asyncio.run(asyncio.wait_for(scenario(pinger), 120))


def test_a_token_over_the_pattern_limits_is_not_issued(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    argv = [
        sys.executable, "-m", "cdc_cache", "gateway", "token",
        "--secret-file", str(tmp_path / "secret"), "--channel", "inventory:" + "*a" * 17,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 2, done.stderr
    assert "at most 16 are allowed" in done.stderr
    assert "Traceback" not in done.stderr
