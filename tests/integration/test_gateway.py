"""The WebSocket gateway against a real Redis: resume, authorization, slow clients, HTTP.

Notifications are written the way the worker writes them (plan + apply script), except
where a test needs payloads of a given size; the gateway runs in this process on a free
port and real WebSocket clients connect to it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cdc_cache.core import metrics
from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.keys import ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.notify.gateway import Gateway
from cdc_cache.notify.session import EXPIRED_CLOSE_CODE, SLOW_CLOSE_CODE
from cdc_cache.notify.settings import GatewaySettings
from cdc_cache.notify.tokens import issue
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.tools.devstack.process import free_port, port_open
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.fixtures_redis import RedisTarget
from tests.integration.services import Service

pytestmark = pytest.mark.integration

SECRET = "test-secret"
RULES = parse_rules(
    """
tables:
  inventory.stock:
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [sku_id, warehouse, qty]
    notify:
      channel: "inventory:{warehouse}"
      fields: [sku_id, warehouse, qty]
"""
)


def token(*patterns: str, ttl_s: int = 600) -> str:
    return issue(SECRET.encode(), patterns, int(time.time()) + ttl_s)


def publish(redis: Any, n: int, warehouse: str, qty: int | None = None) -> None:
    """One applied stock change at position ``n``, through the planner and apply script."""
    row = {"id": n, "sku_id": n, "warehouse": warehouse, "qty": n if qty is None else qty}
    change = ChangeEvent(
        "inventory.stock", Op.CREATE, None, row, {"id": n}, SourcePosition(0, 1, n, 0), n
    )
    RedisApplier(redis).apply(plan(change, RULES))


def run(
    redis_url: str,
    scenario: Callable[[Gateway, str], Awaitable[None]],
    **settings: Any,
) -> None:
    """Run ``scenario(gateway, ws_url)`` against an in-process gateway, then stop it."""

    async def main() -> None:
        config = GatewaySettings(
            redis_url=redis_url,
            port=0,
            secret=SECRET,
            block_ms=100,
            discover_s=0.1,
            **settings,
        )
        gateway = Gateway(config)
        await gateway.start()
        try:
            await _until(lambda: gateway.hub.healthy, "the gateway reads Redis")
            await asyncio.wait_for(scenario(gateway, f"ws://127.0.0.1:{gateway.port}/ws"), 60)
        finally:
            await gateway.stop()

    asyncio.run(main())


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def receive(ws: ClientConnection, kind: str = "message") -> dict[str, Any]:
    """The next frame of ``kind`` (heartbeats and acknowledgements in between are skipped)."""
    while True:
        frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == kind:
            return frame
        assert frame["type"] != "error" or kind == "error", frame


async def subscribe(ws: ClientConnection, *patterns: str, **options: Any) -> dict[str, Any]:
    await ws.send(orjson.dumps({"type": "subscribe", "channels": list(patterns), **options}))
    return await receive(ws, "subscribed")


def test_a_client_that_reconnects_with_its_last_ids_misses_nothing_and_sees_nothing_twice(
    redis_target: RedisTarget,
) -> None:
    redis_client = redis_target.client
    channels = ["north", "south", "east"]
    for n in range(1, 4):  # the channels exist before the gateway starts
        publish(redis_client, n, channels[n - 1])

    async def scenario(gateway: Gateway, url: str) -> None:
        seen: list[int] = []
        last: dict[str, str] = {}
        # It goes away with frames unread: its full receive queue stops it reading, so it
        # would wait its whole close_timeout (10 s) for the gateway's closing frame.
        async with connect(f"{url}?token={token('inventory:*')}", close_timeout=0.5) as ws:
            await subscribe(ws, "inventory:*")
            for n in range(4, 64):
                await asyncio.to_thread(publish, redis_client, n, channels[n % 3])
            # read part of what was sent (something of every channel: on a Cluster the
            # channels' streams fill at their own pace), then go away
            while len(seen) < 25 or len(last) < len(channels):
                frame = await receive(ws)
                seen.append(frame["data"]["values"]["sku_id"])
                last[frame["channel"]] = frame["id"]
        for n in range(64, 100):  # changes while disconnected
            await asyncio.to_thread(publish, redis_client, n, channels[n % 3])
        async with connect(f"{url}?token={token('inventory:*')}") as ws:
            ack = await subscribe(ws, "inventory:*", resume=last)
            assert ack["channels"] == {f"inventory:{c}": last[f"inventory:{c}"] for c in channels}
            while len(seen) < 96:
                frame = await receive(ws)
                seen.append(frame["data"]["values"]["sku_id"])
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(receive(ws), 0.5)
        assert sorted(seen) == list(range(4, 100))  # nothing missed, nothing twice

    run(redis_target.url, scenario)


def test_from_zero_replays_the_stream_and_new_channels_are_followed(
    redis_target: RedisTarget,
) -> None:
    redis_client = redis_target.client
    publish(redis_client, 1, "north")

    async def scenario(gateway: Gateway, url: str) -> None:
        async with connect(f"{url}?token={token('inventory:*')}") as ws:
            await subscribe(ws, "inventory:*", **{"from": "0"})
            assert (await receive(ws))["data"]["values"]["sku_id"] == 1
            await asyncio.to_thread(publish, redis_client, 2, "brand-new")
            frame = await receive(ws)
            assert (frame["channel"], frame["data"]["values"]["sku_id"]) == (
                "inventory:brand-new",
                2,
            )

    run(redis_target.url, scenario)


def test_a_client_resuming_from_an_id_the_stream_was_trimmed_past_is_told_gap(
    redis_target: RedisTarget,
) -> None:
    redis_client = redis_target.client
    for n in range(1, 31):
        publish(redis_client, n, "north")
    key = ns().stream_key("inventory:north")
    seen = redis_client.xrange(key, count=5)[-1][0].decode()  # the client got 1 to 5
    redis_client.xtrim(key, maxlen=10, approximate=False)  # as the worker's MAXLEN does

    async def scenario(gateway: Gateway, url: str) -> None:
        async with connect(f"{url}?token={token('inventory:*')}") as ws:
            await subscribe(ws, "inventory:*", resume={"inventory:north": seen})
            gap = await receive(ws, "gap")
            assert (gap["channel"], gap["after"]) == ("inventory:north", seen)
            got = [(await receive(ws))["data"]["values"]["sku_id"] for _ in range(10)]
            assert got == list(range(21, 31))

    run(redis_target.url, scenario)


def test_a_client_resuming_in_a_stream_redis_lost_and_began_again_is_told_gap(
    redis_target: RedisTarget,
) -> None:
    """Redis lost the stream (a restart without persistence, a failover to an empty
    replica) and the worker wrote on: nothing was trimmed from the new stream, so the
    client resuming from an id of the old one got the new messages with no gap."""
    redis_client = redis_target.client
    for n in range(1, 6):
        publish(redis_client, n, "north")
    key = ns().stream_key("inventory:north")
    seen = redis_client.xrange(key)[-2][0].decode()  # the client got 1 to 4
    redis_client.delete(key)  # lost, with message 5
    gone = ns().stream_key("inventory:south")
    publish(redis_client, 6, "south")
    south_seen = redis_client.xrange(gone)[-1][0].decode()
    redis_client.delete(gone)  # lost too, and nothing written since
    time.sleep(0.002)  # new ids come later, as after a restart
    for n in range(7, 10):
        publish(redis_client, n, "north")

    async def scenario(gateway: Gateway, url: str) -> None:
        async with connect(f"{url}?token={token('inventory:*')}") as ws:
            resume = {"inventory:north": seen, "inventory:south": south_seen}
            await subscribe(ws, "inventory:*", resume=resume)
            frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(5)]
            gaps = {(f["channel"], f["after"]) for f in frames if f["type"] == "gap"}
            assert gaps == {("inventory:north", seen), ("inventory:south", south_seen)}
            north = [f["data"]["values"]["sku_id"] for f in frames if f["type"] == "message"]
            assert north == [7, 8, 9]

    run(redis_target.url, scenario)


def test_live_clients_are_told_gap_when_redis_lost_a_stream_the_gateway_followed(
    redis_server: RedisServer, redis_client: Any
) -> None:
    key = ns().stream_key("bulk:1")
    redis_client.sadd(ns().channels, "bulk:1")

    def add(n: int) -> str:
        return str(redis_client.xadd(key, {"p": orjson.dumps({"n": n})}).decode())

    ids = {0: add(0)}

    async def scenario(gateway: Gateway, url: str) -> None:
        async with connect(f"{url}?token={token('bulk:*')}") as ws:
            await subscribe(ws, "bulk:*")
            ids[1] = add(1)
            assert (await receive(ws))["data"]["n"] == 1
            # The gateway stands still (this blocks its event loop) while Redis loses the
            # stream with message 2 and the worker writes 3 into a new one.
            ids[2] = add(2)
            redis_client.delete(key)
            time.sleep(0.002)
            add(3)
            last, told = 1, None
            while True:  # 2 goes out if a read blocked in Redis got it before the loss
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "gap":
                    told = (frame["channel"], frame["after"])
                elif frame["type"] == "message" and frame["data"]["n"] < 3:
                    last = frame["data"]["n"]
                elif frame["type"] == "message":
                    break
            assert told == ("bulk:1", ids[last])

    run(redis_server.address(), scenario)


def test_a_client_receives_only_granted_channels_and_an_error_for_the_rest(
    redis_server: RedisServer, redis_client: Any
) -> None:
    publish(redis_client, 1, "north")
    publish(redis_client, 2, "south")
    refused = metrics.GATEWAY_AUTH_FAILURES.labels("forbidden")
    invalid = metrics.GATEWAY_AUTH_FAILURES.labels("invalid_token")

    async def scenario(gateway: Gateway, url: str) -> None:
        before = refused._value.get(), invalid._value.get()
        async with connect(f"{url}?token={token('inventory:north')}") as ws:
            await ws.send(orjson.dumps({"type": "subscribe", "channels": ["inventory:*"]}))
            error = await receive(ws, "error")
            assert (error["code"], error["channel"]) == ("forbidden", "inventory:*")
            ack = await receive(ws, "subscribed")
            assert ack["channels"] == {}
            channels = ["inventory:north", "inventory:south"]
            await ws.send(orjson.dumps({"type": "subscribe", "channels": channels}))
            assert (await receive(ws, "error"))["channel"] == "inventory:south"
            assert list((await receive(ws, "subscribed"))["channels"]) == ["inventory:north"]
            for n in range(3, 9):
                await asyncio.to_thread(publish, redis_client, n, ["north", "south"][n % 2])
            got = [(await receive(ws))["channel"] for _ in range(3)]
            assert got == ["inventory:north"] * 3
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(receive(ws), 0.5)
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{url}?token={token('inventory:*')}x"):
                pass
        assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            async with connect(f"{url}?token={token('inventory:*', ttl_s=-1)}"):
                pass
        assert refused._value.get() - before[0] == 2
        assert invalid._value.get() - before[1] == 1

    run(redis_server.address(), scenario)


def stalled_client(port: int, path: str, patterns: list[str], **request: Any) -> socket.socket:
    """A WebSocket client that subscribes (``request``: more of the subscribe request) and
    then stops reading (a tiny receive buffer, which also turns off the kernel's
    autotuning), so its backlog piles up in the gateway."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    body = orjson.dumps({"type": "subscribe", "channels": patterns, **request})
    assert len(body) < 2**16
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    size = bytes([0x80 | len(body)]) if len(body) < 126 else b"\xfe" + struct.pack("!H", len(body))
    sock.sendall(b"\x81" + size + mask + masked)  # one masked text frame
    return sock


def frames_of(sock: socket.socket, timeout: float = 30) -> Iterator[tuple[int, bytes]]:
    """The frames the stalled client is sent (opcode, payload), read from its backlog on."""
    sock.settimeout(timeout)
    reader = sock.makefile("rb")
    while True:
        first, second = reader.read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", reader.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", reader.read(8))[0]
        yield first & 0x0F, reader.read(length)


def close_frame_of(sock: socket.socket) -> tuple[int, str]:
    """Read the stalled client's backlog to the close frame; its code and reason."""
    for opcode, payload in frames_of(sock):
        if opcode == 0x8:
            sock.close()
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
    raise AssertionError  # pragma: no cover - frames_of never ends


def test_a_slow_client_is_dropped_with_a_reason_and_never_delays_a_fast_one(
    redis_server: RedisServer, redis_client: Any
) -> None:
    redis_client.sadd(ns().channels, "bulk:1")
    redis_client.xadd(ns().stream_key("bulk:1"), {"p": b"{}"})
    blob = b"x" * 64_000
    count = 300  # ~19 MB: more than the slow client's socket buffers and queue can hold
    drops = metrics.GATEWAY_DROPS.labels("slow")

    async def scenario(gateway: Gateway, url: str) -> None:
        dropped_before = drops._value.get()
        slow = await asyncio.to_thread(
            stalled_client, gateway.port, f"/ws?token={token('bulk:*')}", ["bulk:*"]
        )
        async with connect(f"{url}?token={token('bulk:*')}", max_size=2**20) as fast:
            await subscribe(fast, "bulk:*")
            await _until(lambda: len(gateway.hub.subscribers["bulk:1"]) == 2, "both subscribed")
            started = time.monotonic()
            pipe = redis_client.pipeline(transaction=False)
            for n in range(count):
                pipe.xadd(
                    ns().stream_key("bulk:1"), {"p": orjson.dumps({"n": n, "blob": blob.decode()})}
                )
            await asyncio.to_thread(pipe.execute)
            for n in range(count):
                assert orjson.loads(await fast.recv())["data"]["n"] == n
            elapsed = time.monotonic() - started
        await _until(lambda: drops._value.get() > dropped_before, "the slow client is dropped")
        code, reason = await asyncio.to_thread(close_frame_of, slow)
        assert code == SLOW_CLOSE_CODE and "resume" in reason, (code, reason)
        assert elapsed < 10, f"the fast client needed {elapsed:.1f} s"
        print(f"\nfast client received {count} x 64 KB in {elapsed:.2f} s beside a stalled one")

    run(redis_server.address(), scenario, queue_size=50)


def test_a_stalled_client_holds_up_a_stop_two_seconds_at_most(
    redis_server: RedisServer, redis_client: Any
) -> None:
    redis_client.sadd(ns().channels, "bulk:1")
    redis_client.xadd(ns().stream_key("bulk:1"), {"p": b"{}"})
    blob = "x" * 64_000
    stopped: list[float] = []

    async def main() -> None:
        config = GatewaySettings(
            redis_url=redis_server.address(), port=0, secret=SECRET, block_ms=100,
            discover_s=0.1, queue_size=1000, watchdog=False,
        )  # fmt: skip
        gateway = Gateway(config)
        await gateway.start()
        path = f"/ws?token={token('bulk:*')}"
        slow = await asyncio.to_thread(stalled_client, gateway.port, path, ["bulk:*"])
        await _until(lambda: len(gateway.hub.subscribers["bulk:1"]) == 1, "it subscribed")
        pipe = redis_client.pipeline(transaction=False)
        for n in range(150):  # ~10 MB: more than the socket buffers hold, less than its queue
            pipe.xadd(ns().stream_key("bulk:1"), {"p": orjson.dumps({"n": n, "blob": blob})})
        await asyncio.to_thread(pipe.execute)
        await asyncio.sleep(1)  # the gateway's writes to it are stuck
        started = time.monotonic()
        await gateway.stop()  # its close frame cannot be sent: the client is cut
        stopped.append(time.monotonic() - started)
        slow.close()

    asyncio.run(main())
    # websockets waits 10 s by default for a closing handshake that cannot happen.
    assert stopped[0] < 5, f"the stop took {stopped[0]:.1f} s"


def test_a_client_that_asks_the_past_of_many_channels_and_reads_nothing_holds_few_pages(
    redis_server: RedisServer, redis_client: Any
) -> None:
    channels = [f"bulk:{n}" for n in range(40)]
    blob = "x" * 8_000
    pipe = redis_client.pipeline(transaction=False)
    pipe.sadd(ns().channels, *channels)
    for channel in channels:  # each channel's past: one page of 100 entries, 800 KB
        for n in range(100):
            pipe.xadd(ns().stream_key(channel), {"p": orjson.dumps({"n": n, "blob": blob})})
    pipe.execute()

    async def scenario(gateway: Gateway, url: str) -> None:
        redis_client.config_resetstat()
        slow = await asyncio.to_thread(
            stalled_client, gateway.port, f"/ws?token={token('bulk:*')}", ["bulk:*"],
            **{"from": "0"},
        )  # fmt: skip
        await _until(lambda: len(gateway.hub.subscribers["bulk:39"]) == 1, "it subscribed")
        await asyncio.sleep(2)  # the replay waits on the client's full buffers
        stats = redis_client.info("commandstats").get("cmdstat_xrange", {})
        slow.close()
        # What ~4 MB of socket buffers took, one page at a time; not every channel's page.
        assert stats.get("calls", 0) < 20, f"{stats} for a client that reads nothing"

    run(redis_server.address(), scenario)


def test_a_replay_the_stream_is_trimmed_under_says_gap_before_what_follows(
    redis_server: RedisServer, redis_client: Any
) -> None:
    key = ns().stream_key("bulk:1")
    blob = "x" * 8_000
    redis_client.sadd(ns().channels, "bulk:1")
    pipe = redis_client.pipeline(transaction=False)
    for n in range(1500):  # 12 MB: its first page of 1,000 is more than the buffers hold
        pipe.xadd(key, {"p": orjson.dumps({"n": n, "blob": blob})})
    ids = [raw.decode() for raw in pipe.execute()]

    def read_until_quiet(sock: socket.socket) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        try:
            for opcode, payload in frames_of(sock, timeout=3):
                if opcode == 0x1:
                    got.append(orjson.loads(payload))
        except TimeoutError:
            return got
        raise AssertionError  # pragma: no cover - frames_of never ends

    async def scenario(gateway: Gateway, url: str) -> None:
        slow = await asyncio.to_thread(
            stalled_client, gateway.port, f"/ws?token={token('bulk:*')}", ["bulk:1"],
            **{"from": "0"},
        )  # fmt: skip
        await asyncio.sleep(2)  # the replay waits on the client within its first page
        redis_client.xtrim(key, maxlen=10, approximate=False)  # the stream moves on meanwhile
        got = await asyncio.to_thread(read_until_quiet, slow)
        slow.close()
        sent = [
            (f["type"], f["data"]["n"] if f["type"] == "message" else f["after"])
            for f in got
            if f["type"] in ("message", "gap")
        ]
        assert sent == [
            *(("message", n) for n in range(1000)),
            ("gap", ids[999]),
            *(("message", n) for n in range(1490, 1500)),
        ]

    run(redis_server.address(), scenario)


def test_live_clients_are_told_gap_when_the_gateway_fell_behind_a_trimmed_stream(
    redis_server: RedisServer, redis_client: Any
) -> None:
    key = ns().stream_key("bulk:1")
    redis_client.sadd(ns().channels, "bulk:1")

    def add(n: int, **trim: Any) -> str:
        return str(redis_client.xadd(key, {"p": orjson.dumps({"n": n})}, **trim).decode())

    ids = {0: add(0)}

    async def scenario(gateway: Gateway, url: str) -> None:
        async with connect(f"{url}?token={token('bulk:*')}") as ws:
            await subscribe(ws, "bulk:*")
            ids[1] = add(1)
            assert (await receive(ws))["data"]["n"] == 1
            # The gateway stands still (this blocks its event loop) while the stream moves
            # on past it, as while Redis is away from it alone or during a long pause.
            for n in range(2, 52):
                ids[n] = add(n, maxlen=10, approximate=False)
            last, told, gaps, jumps = 1, False, 0, 0
            while last < 51:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "gap":
                    assert (frame["channel"], frame["after"]) == ("bulk:1", ids[last])
                    told, gaps = True, gaps + 1
                elif frame["type"] == "message":
                    n = frame["data"]["n"]
                    assert n == last + 1 or told, f"{n} after {last}, and no gap said before"
                    jumps += n != last + 1
                    last, told = n, False
            # One hole; said once, or twice when a read came just before the trim (the
            # gateway cannot tell then whether entries before that read were lost too).
            assert jumps == 1 and 1 <= gaps <= 2

    run(redis_server.address(), scenario)


def test_http_endpoints_share_the_port(redis_server: RedisServer, redis_client: Any) -> None:
    async def scenario(gateway: Gateway, url: str) -> None:
        base = url.replace("ws://", "http://").removesuffix("/ws")

        def get(path: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        status, page = await asyncio.to_thread(get, "/")
        assert status == 200 and b"Live stock by warehouse" in page
        status, health = await asyncio.to_thread(get, "/healthz")
        assert status == 200 and orjson.loads(health)["redis"] == "ok"
        status, text = await asyncio.to_thread(get, "/metrics")
        assert status == 200 and b"cdc_cache_gateway_connections" in text
        assert (await asyncio.to_thread(get, "/nothing"))[0] == 404
        assert (await asyncio.to_thread(get, "/ws"))[0] == 401  # no token

    run(redis_server.address(), scenario)


def test_a_connection_is_closed_when_its_token_expires(
    redis_server: RedisServer, redis_client: Any
) -> None:
    async def scenario(gateway: Gateway, url: str) -> None:
        async with connect(f"{url}?token={token('inventory:*', ttl_s=2)}") as ws:
            await subscribe(ws, "inventory:*")
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == EXPIRED_CLOSE_CODE
        assert "token expired" in info.value.rcvd.reason

    run(redis_server.address(), scenario)


def gateway_process(tmp_path: Path, redis_url: str) -> tuple[Service, int]:
    """``cdc-cache gateway`` started as operators run it, once it listens; and its port."""
    port = free_port()
    (tmp_path / "secret").write_text(SECRET)
    gateway = Service(
        [
            sys.executable, "-m", "cdc_cache", "gateway",
            "--redis-url", redis_url, "--port", str(port),
            "--secret-file", str(tmp_path / "secret"),
        ],
        tmp_path / "gateway.log",
    )  # fmt: skip
    gateway.start()
    deadline = time.monotonic() + 30
    while not port_open(port):
        gateway.check_alive()
        assert time.monotonic() < deadline, gateway.tail()
        time.sleep(0.05)
    return gateway, port


def test_gateway_process_stops_on_sigterm_closing_clients_as_going_away(
    tmp_path: Path, redis_target: RedisTarget
) -> None:
    # Channels to follow: on a Cluster every round reads each slot, the state in which a
    # cancellation lost inside the Redis client used to leave the gateway running.
    for n, warehouse in enumerate(("north", "south", "east", "west"), start=1):
        publish(redis_target.client, n, warehouse)
    gateway, port = gateway_process(tmp_path, redis_target.url)
    try:

        async def scenario() -> int | None:
            async with connect(f"ws://127.0.0.1:{port}/ws?token={token('inventory:*')}") as ws:
                await subscribe(ws, "inventory:*")
                await asyncio.sleep(1)  # reading rounds under way
                assert await asyncio.to_thread(gateway.terminate, 10) == 0, gateway.tail()
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 10)
                return info.value.rcvd.code if info.value.rcvd else None

        assert asyncio.run(scenario()) == 1001
        assert "gateway stopping" in gateway.log.read_text()
    finally:
        gateway.stop()


def test_gateway_process_stops_on_sigterm_at_once_while_redis_does_not_answer(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    redis_pid = server.process.pid()
    assert redis_pid is not None
    gateway, port = gateway_process(tmp_path, server.address())
    try:
        # A client stuck in its opening handshake, which the server waits for by default.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            os.kill(redis_pid, signal.SIGSTOP)  # reads and writes to Redis hang
            time.sleep(1.5)  # the watchdog's next look waits on Redis (5 s socket timeout)
            started = time.monotonic()
            assert gateway.terminate(30) == 0, gateway.tail()
            stopped_s = time.monotonic() - started
        # Unbounded, it waited out the handshake (10 s), the watchdog's look and its lock
        # release (5 s each).
        assert stopped_s < 6, gateway.tail()
        assert "not waiting for it to release the lock" in gateway.log.read_text()
    finally:
        os.kill(redis_pid, signal.SIGCONT)
        gateway.stop()
        server.stop()


def test_a_channel_key_that_is_no_stream_does_not_stop_the_others(
    redis_server: RedisServer, redis_client: Any
) -> None:
    publish(redis_client, 1, "north")

    async def scenario(gateway: Gateway, url: str) -> None:
        async with connect(f"{url}?token={token('inventory:*')}") as ws:
            await subscribe(ws, "inventory:*")
            redis_client.sadd(ns().channels, "inventory:broken")
            redis_client.set(ns().stream_key("inventory:broken"), b"not a stream")
            await _until(lambda: "inventory:broken" in gateway.hub.broken, "it is set aside")
            await asyncio.to_thread(publish, redis_client, 2, "north")
            frame = await receive(ws)
            assert (frame["channel"], frame["data"]["values"]["sku_id"]) == ("inventory:north", 2)
            assert "inventory:broken" not in gateway.hub.positions

    run(redis_server.address(), scenario)


def test_redis_outage_is_retried_reported_and_recovered_from(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    client = Redis.from_url(server.address())
    publish(client, 1, "north")
    retries = metrics.RETRIES.labels("redis")

    async def scenario(gateway: Gateway, url: str) -> None:
        base = url.replace("ws://", "http://").removesuffix("/ws")
        before = retries._value.get()
        async with connect(f"{url}?token={token('inventory:*')}") as ws:
            await subscribe(ws, "inventory:*")
            await asyncio.to_thread(server.stop)
            await _until(lambda: retries._value.get() > before, "a retry is counted")
            with pytest.raises(urllib.error.HTTPError) as info:
                await asyncio.to_thread(urllib.request.urlopen, base + "/healthz", timeout=5)
            assert info.value.code == 503
            await asyncio.to_thread(server.start)
            await _until(lambda: gateway.hub.healthy, "the gateway reads Redis again", 30)
            await asyncio.to_thread(publish, client, 2, "north")
            frame = await receive(ws)  # the client stayed connected and is served again
            assert frame["data"]["values"]["sku_id"] == 2

    try:
        run(server.address(), scenario)
    finally:
        client.close()
        server.stop()


def test_a_client_resuming_while_the_gateway_starts_without_redis_misses_nothing(
    tmp_path: Path,
) -> None:
    # A gateway restarted while Redis is away serves its clients at once, and they come
    # back with their last ids before it has found any channel.
    server = RedisServer(tmp_path / "redis", free_port(), persist=True)
    server.start()
    client = Redis.from_url(server.address())
    for n in range(1, 4):
        publish(client, n, "north")
    seen = client.xrange(ns().stream_key("inventory:north"), count=1)[0][0].decode()
    client.close()
    server.stop()

    async def main() -> None:
        config = GatewaySettings(
            redis_url=server.address(), port=0, secret=SECRET, block_ms=100,
            discover_s=0.1, watchdog=False,
        )  # fmt: skip
        gateway = Gateway(config)
        await gateway.start()
        try:
            url = f"ws://127.0.0.1:{gateway.port}/ws?token={token('inventory:*')}"
            async with connect(url) as ws:
                request = {"channels": ["inventory:*"], "resume": {"inventory:north": seen}}
                await ws.send(orjson.dumps({"type": "subscribe", **request}))
                await asyncio.sleep(0.5)  # the gateway retries Redis meanwhile
                await asyncio.to_thread(server.start)
                ack = await receive(ws, "subscribed")
                assert ack["channels"] == {"inventory:north": seen}
                got = [(await receive(ws))["data"]["values"]["sku_id"] for _ in range(2)]
                assert got == [2, 3]
        finally:
            await gateway.stop()

    try:
        asyncio.run(main())
    finally:
        server.stop()
