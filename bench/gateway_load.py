"""Load on the notification gateway: many WebSocket clients, many channels, on loopback.

Starts Redis (unless ``--redis-url`` names one) and ``cdc-cache gateway`` as a process on
free ports, connects ``--clients`` WebSocket clients, each subscribed to one of
``--channels`` channels (round robin), then appends notifications to the channels' streams
at ``--rate`` per second for ``--duration`` seconds, in the entry format the apply script
writes (``p`` = JSON payload, the channel recorded in ``cdc:channels``). Each payload
carries the time it was appended; each client computes the delivery latency (append →
received) of every message it gets, and counts them, so loss and duplicates show too.
The publisher runs in a process of its own, paced by the monotonic clock (see ``publish``):
``published_per_s`` is its pace, measured, the load the gateway was offered.

    python bench/gateway_load.py [--clients 1000] [--channels 20] [--rate 200] [--duration 30]

Writes the result to ``bench/results/gateway-load.json`` (``--out``) and appends one
Markdown table row to ``docs/gateway-load.md`` (``--markdown``; ``--no-markdown`` skips).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from cdc_cache.core.keys import ns
from cdc_cache.notify.tokens import issue
from cdc_cache.sink.connection import connect as connect_sync
from cdc_cache.sink.connection import connect_async, split_cluster_flag
from cdc_cache.tools.devstack.process import free_port, port_open
from cdc_cache.tools.devstack.redis import RedisClusterServers, RedisServer

ROOT = Path(__file__).resolve().parents[1]
SECRET = "gateway-load-secret"
PREFIX = "load:"


@dataclass
class Tally:
    """What the clients received."""

    latencies_ms: list[float] = field(default_factory=list)
    received: Counter[tuple[int, int]] = field(default_factory=Counter)  # (client, seq)
    closed: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def client(index: int, url: str, channel: str, tally: Tally, ready: asyncio.Event) -> None:
    ws: ClientConnection
    async with connect(url, max_queue=None, open_timeout=60, ping_interval=None) as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "channels": [channel]}))
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] == "subscribed":
                    ready.set()
                elif frame["type"] == "message":
                    data = frame["data"]
                    tally.latencies_ms.append(time.time() * 1000 - data["sent_ms"])
                    tally.received[(index, data["seq"])] += 1
        except Exception as exc:  # a dropped client is a result: recorded, not raised
            tally.closed.append(f"client {index}: {exc}")


def ready() -> None:
    """Nothing: once it ran in the publisher's process, that process is up and ready."""


def publish(redis_url: str, streams: list[str], rate: float, duration: float) -> tuple[int, float]:
    """Append ``rate`` notifications a second for ``duration`` s, round robin over ``streams``.

    Runs in a process of its own with a plain client (see :func:`measure`): neither the
    clients' event loop, busy parsing every frame, nor the interpreter lock its thread
    holds on a loaded machine can stretch the pace. Message ``i`` is due ``i / rate`` s
    after the first (the monotonic clock); each wake sends every message due, so a late
    wake catches up and exactly ``round(rate * duration)`` are sent. Returns their count
    and the seconds they took: from the first send to the end of the last, plus one
    interval (``count / rate`` when every send was on time), so a publisher that fell
    behind shows a longer time and a lower pace, never a shorter one.
    """
    redis = connect_sync(redis_url)
    total = round(rate * duration)
    sent = 0
    started = last = time.monotonic()
    try:
        while sent < total:
            due = min(total, math.floor((time.monotonic() - started) * rate + 1e-9) + 1)
            if due > sent:
                pipe = redis.pipeline(transaction=False)
                for seq in range(sent, due):
                    payload = orjson.dumps(
                        {"table": "load", "op": "u", "seq": seq, "sent_ms": time.time() * 1000}
                    )
                    stream = streams[seq % len(streams)]
                    pipe.xadd(stream, {"p": payload}, maxlen=10_000, approximate=True)
                pipe.execute()
                sent = due
                last = time.monotonic()
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
    finally:
        redis.close()
    return sent, last - started + 1 / rate


def start_gateway(redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CDC_CACHE_GATEWAY_SECRET": SECRET}
    argv = [sys.executable, "-m", "cdc_cache", "gateway", "--redis-url", redis_url]
    argv += ["--port", str(port), "--queue-size", "1000", "--log-level", "WARNING"]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            msg = f"gateway did not start:\n{log.read_text()}"
            raise RuntimeError(msg)
        time.sleep(0.05)
    return proc


async def measure(args: argparse.Namespace, redis_url: str, port: int) -> dict[str, Any]:
    channels = [f"{PREFIX}{i}" for i in range(args.channels)]
    redis = connect_async(redis_url)
    await redis.sadd(ns().channels, *channels)  # known to the gateway before clients connect
    await redis.aclose()  # type: ignore[attr-defined]  # stubs predate aclose
    await asyncio.sleep(1.5)  # the gateway discovers channels once a second
    token = issue(SECRET.encode(), [f"{PREFIX}*"], int(time.time()) + 3600)
    url = f"ws://127.0.0.1:{port}/ws?token={token}"
    tally = Tally()
    readies = [asyncio.Event() for _ in range(args.clients)]
    began = time.monotonic()
    tasks = []
    for i in range(args.clients):
        channel = channels[i % len(channels)]
        tasks.append(asyncio.create_task(client(i, url, channel, tally, readies[i])))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let handshakes proceed instead of queueing 1,000 at once
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    connect_s = time.monotonic() - began
    streams = [ns().stream_key(channel) for channel in channels]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as publisher:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(publisher, ready)  # spawned before the clock starts
        started = time.monotonic()
        sent, publish_s = await loop.run_in_executor(
            publisher, publish, redis_url, streams, args.rate, args.duration
        )
    per_channel = Counter(i % args.channels for i in range(args.clients))
    expected = sum(per_channel[seq % args.channels] for seq in range(sent))
    deadline = time.monotonic() + args.drain
    while sum(tally.received.values()) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    delivered_s = time.monotonic() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    total = sum(tally.received.values())
    return {
        "redis": "cluster" if split_cluster_flag(redis_url)[0] else "single",
        "clients": args.clients,
        "channels": args.channels,
        "target_rate_per_s": args.rate,
        "duration_s": round(publish_s, 2),
        "connect_s": round(connect_s, 2),
        "published": sent,
        "expected_deliveries": expected,
        "deliveries": total,
        "duplicates": sum(n - 1 for n in tally.received.values() if n > 1),
        "missing": expected - len(tally.received),
        "dropped_clients": len(tally.closed),
        "published_per_s": round(sent / publish_s, 1),
        "deliveries_per_s": round(total / delivered_s, 1),
        "latency_ms": {
            "p50": round(percentile(tally.latencies_ms, 0.50), 1),
            "p99": round(percentile(tally.latencies_ms, 0.99), 1),
            "max": round(max(tally.latencies_ms, default=0.0), 1),
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
    }


def markdown_row(result: dict[str, Any]) -> str:
    latency = result["latency_ms"]
    return (
        f"| {time.strftime('%Y-%m-%d')} | {result['clients']} | {result['channels']} | "
        f"{result['published_per_s']} | {result['deliveries_per_s']} | {latency['p50']} | "
        f"{latency['p99']} | {latency['max']} | {result['missing']} | {result['duplicates']} | "
        f"{result['dropped_clients']} | {result['redis']} |"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start what is missing, measure, stop what was started; the result."""
    home = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    server = None
    redis_url = args.redis_url
    if redis_url is None:
        server = (
            RedisClusterServers(
                home / "redis", [free_port() for _ in range(3)], [free_port() for _ in range(3)]
            )
            if args.cluster
            else RedisServer(home / "redis", free_port())
        )
        server.start()
        redis_url = server.address()
    port = free_port()
    gateway = start_gateway(redis_url, port, home / "gateway.log")
    try:
        result = asyncio.run(measure(args, redis_url, port))
    finally:
        stopping = time.monotonic()
        gateway.terminate()
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        stop_s = time.monotonic() - stopping
        if server is not None:
            server.stop()
    # How the gateway took SIGTERM after the clients left (killed after 30 s: exit -9).
    result["gateway_stop"] = {"exit": gateway.returncode, "seconds": round(stop_s, 2)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        with Path(args.markdown).open("a") as doc:
            doc.write(markdown_row(result) + "\n")
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="notifications per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of publishing")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for the tail")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--cluster", action="store_true", help="start a 3-node Redis Cluster")
    parser.add_argument("--out", default=str(ROOT / "bench/results/gateway-load.json"))
    parser.add_argument("--markdown", default=str(ROOT / "docs/gateway-load.md"))
    parser.add_argument("--no-markdown", dest="markdown", action="store_const", const=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    outcome = run(parse_args())
    print(json.dumps(outcome, indent=2))
