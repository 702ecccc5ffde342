"""``cdc-cache gateway``: live notifications from Redis streams to WebSocket clients.

The apply script appends every applied change of a table with a ``notify`` rule to the
stream of its channel (``cdc:n:<channel>``, bounded) and records the channel in the set
``cdc:channels``. One reader task follows every stream with XREAD BLOCK and fans each
entry out to the clients subscribed to its channel. Each client has a bounded queue and
its own sender task: a client that cannot keep up is disconnected with a reason (close
code 4008) instead of slowing the others, and reconnects with the last id it saw.

Protocol (JSON text frames), client to gateway:

- ``{"type": "subscribe", "channels": [patterns], "from": "$" | "0" | id,
  "resume": {channel: last id seen}}``: ``*`` in a pattern matches any run of characters;
  each matched channel starts after ``resume[channel]``, else after ``from`` (``$``: only
  new messages, the default; ``0``: everything the stream still holds).
- ``{"type": "unsubscribe", "channels": [patterns]}``, ``{"type": "ping"}``.

Gateway to client: ``welcome``, ``subscribed``, ``message`` (``channel``, ``id``,
``data``: the change), ``gap`` (messages after ``after`` were trimmed away before they went out),
``heartbeat``, ``pong`` and ``error`` (``code``: forbidden | bad_request |
too_many_patterns | rate_limited).

One client cannot make the gateway slow for the others: a connection holds at most
``max_patterns`` patterns and is served ``requests_per_s`` requests a second (a pattern
named in a request counts as one), patterns match in linear time
(:mod:`cdc_cache.notify.patterns`), and a new channel is compared once with each distinct pattern
that could match it, however many clients hold that pattern.

The pieces: entries as frames (``frames``), one client (``session``), the streams' reader
(``hub``); here the server, its HTTP endpoints and the protocol.

Kept in one module: the protocol's handlers share one connection's limits and the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import math
import signal
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import exceptions as rex
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from cdc_cache.core import metrics
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.redact import redact_url
from cdc_cache.fallback.watchdog import Watchdog
from cdc_cache.notify.frames import format_id, parse_id
from cdc_cache.notify.hub import Hub, stop_if_misconfigured
from cdc_cache.notify.patterns import validate_pattern
from cdc_cache.notify.rate_limit import TokenBucket
from cdc_cache.notify.session import CLOSE_TIMEOUT_S, EXPIRED_CLOSE_CODE, Session
from cdc_cache.notify.settings import GatewaySettings
from cdc_cache.notify.tokens import Grant, TokenError, verify
from cdc_cache.sink.connection import connect, connect_async

log = logging.getLogger("cdc_cache.gateway")

STOP_WAIT_S: Final = CLOSE_TIMEOUT_S + 0.5  # for the connections to close, then cut them
READER_STOP_S: Final = 5.0  # the reader stops at its next step: one read or one backoff wait
WATCHDOG_CLOSE_S: Final = 2.0  # then the process exits without waiting on Redis any longer


class Gateway:
    """The WebSocket server (``/ws``) with the demo page, ``/healthz`` and ``/metrics``."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._key = settings.signing_key()
        self._redis = connect_async(settings.redis_url)
        self.hub = Hub(self._redis, block_ms=settings.block_ms, discover_s=settings.discover_s)
        self._server: Server | None = None
        self._reader: asyncio.Task[None] | None = None
        # Runs where something outlives the worker: falls back to ttl while it is down.
        self.watchdog = (
            Watchdog(connect(settings.redis_url), down_after_s=settings.watchdog_down_after_s)
            if settings.watchdog
            else None
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def start(self) -> None:
        """Check the Redis credentials, bind the port, follow the streams, watch the worker.

        Refused credentials or a port in use raise ConfigError; an unreachable Redis is
        waited for (the reader retries it).
        """
        try:
            await self._redis.ping()
        except rex.RedisError as exc:
            stop_if_misconfigured(exc)
        settings = self.settings
        try:
            self._server = await serve(
                self._session,
                settings.host,
                settings.port,
                process_request=self._http,
                ping_interval=settings.heartbeat_s,
                ping_timeout=settings.heartbeat_s,
                max_size=64 * 1024,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except OSError as exc:
            msg = (
                f"port {settings.port} on {settings.host}: cannot listen there "
                f"({exc.strerror}); set port (--port, CDC_CACHE_GATEWAY_PORT) to a free one"
            )
            raise ConfigError(msg) from None
        if self.watchdog is not None:
            self.watchdog.start()
        self._reader = asyncio.create_task(self.hub.run())

    async def run_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises the reader's ConfigError if it gave up first."""
        assert self._reader is not None, "start() first"
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if self._reader.done() and not self._reader.cancelled():
            self._reader.result()  # raises what ended it

    async def stop(self) -> None:
        """Close every connection (1001 going away), stop reading, release Redis.

        Bounded whatever state it finds: a client that does not answer the close is cut
        after ``CLOSE_TIMEOUT_S`` (one still in its opening handshake after ``STOP_WAIT_S``);
        a reader that lost its cancellation is cancelled again and stops at its next step
        anyway; a watchdog stuck on a Redis that does not answer is left behind after
        ``WATCHDOG_CLOSE_S`` (its lock expires on its own). The watchdog stops meanwhile.
        """
        self.hub.stop()
        watchdog = (
            asyncio.create_task(asyncio.to_thread(self.watchdog.close, WATCHDOG_CLOSE_S))
            if self.watchdog is not None
            else None
        )
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(asyncio.shield(self._server.wait_closed()), STOP_WAIT_S)
            except TimeoutError:  # a client silent in its opening handshake: 10 s more
                for connection in self._server.all_connections:
                    connection.transport.abort()
                for handler in self._server.handler_tasks:
                    handler.cancel()  # its socket closes as the process exits
                await self._server.wait_closed()
        if self._reader is not None:
            await _cancel(self._reader)
        if watchdog is not None:
            await watchdog
        await self._redis.aclose()  # type: ignore[attr-defined]  # stubs predate aclose

    def _grant(self, request: Request) -> Grant:
        query = parse_qs(urlsplit(request.path).query)
        token = (query.get("token") or [""])[0]
        header = request.headers.get("Authorization", "")
        if not token and header.startswith("Bearer "):
            token = header.removeprefix("Bearer ")
        return verify(self._key, token, time.time())

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/ws":
            try:
                self._grant(request)
            except TokenError as exc:
                reason = "expired" if "expired" in str(exc) else "invalid_token"
                metrics.GATEWAY_AUTH_FAILURES.labels(reason).inc()
                return connection.respond(HTTPStatus.UNAUTHORIZED, f"{exc}\n")
            return None
        if path in ("/", "/index.html"):
            return _respond(connection, HTTPStatus.OK, demo_page(), "text/html; charset=utf-8")
        if path == "/healthz":
            status = HTTPStatus.OK if self.hub.healthy else HTTPStatus.SERVICE_UNAVAILABLE
            body = orjson.dumps(
                {
                    "redis": "ok" if self.hub.healthy else "unavailable",
                    "clients": len(self.hub.sessions),
                    "channels": len(self.hub.positions),
                    "broken_channels": sorted(self.hub.broken),
                    "watchdog": None if self.watchdog is None else self.watchdog.view(),
                }
            )
            return _respond(connection, status, body, "application/json")
        if path == "/metrics":
            return _respond(connection, HTTPStatus.OK, generate_latest(), CONTENT_TYPE_LATEST)
        return connection.respond(
            HTTPStatus.NOT_FOUND, "not found: try /, /ws, /healthz, /metrics\n"
        )

    async def _session(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        grant = self._grant(ws.request)  # checked in the handshake already
        budget = TokenBucket(
            self.settings.requests_per_s, self.settings.request_burst, time.monotonic()
        )
        session = Session(ws, grant, self.settings.queue_size, budget)
        self.hub.sessions.add(session)
        metrics.GATEWAY_CONNECTIONS.inc()
        pump = asyncio.create_task(session.pump())
        beat = asyncio.create_task(self._heartbeats(session))
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, grant.expires_at - time.time()),
            session.drop,
            "token_expired",
            "token expired; get a fresh one",
            EXPIRED_CLOSE_CODE,
        )
        session.control("welcome", patterns=list(grant.patterns), expires_at=grant.expires_at)
        try:
            await self._hub_ready(ws)
            async for message in ws:
                self._handle(session, message)
                await asyncio.sleep(0)  # a client sending fast takes turns with the others
        except ConnectionClosed:
            pass
        finally:
            session.closed = True
            expiry.cancel()
            self.hub.remove(session)
            metrics.GATEWAY_CONNECTIONS.dec()
            for task in (pump, beat):
                task.cancel()
            await asyncio.gather(pump, beat, return_exceptions=True)

    async def _hub_ready(self, ws: ServerConnection) -> None:
        """Wait until the hub knows every channel (or the client goes away).

        A client reconnecting with ``resume`` as the gateway starts (or while Redis is
        still down) would otherwise be subscribed to the channels known so far only; the
        others, attached when found at their end, would skip what it asked to resume.
        """
        if self.hub.ready.is_set():
            return
        waits = [asyncio.create_task(self.hub.ready.wait()), asyncio.create_task(ws.wait_closed())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _heartbeats(self, session: Session) -> None:
        while not session.closed:
            await asyncio.sleep(self.settings.heartbeat_s)
            session.control("heartbeat", ts=int(time.time() * 1000))

    def _handle(self, session: Session, message: str | bytes) -> None:
        if not self._within_budget(session, 1):  # before parsing: a flood costs little
            return
        try:
            request = orjson.loads(message)
            kind = request["type"]
            if kind == "ping":
                session.control("pong")
            elif kind in ("subscribe", "unsubscribe"):
                patterns = request["channels"]
                if not isinstance(patterns, list):
                    msg = "channels must be a list of patterns"
                    raise TypeError(msg)
                if len(patterns) > self.settings.max_patterns:
                    self._refuse(
                        session,
                        "too_many_patterns",
                        f"{len(patterns)} patterns in one request; a connection may hold "
                        f"at most {self.settings.max_patterns}",
                    )
                elif self._within_budget(session, len(patterns) - 1):  # one per pattern
                    valid = [validate_pattern(p) for p in patterns]
                    if kind == "subscribe":
                        self._subscribe(session, valid, request)
                    else:
                        self._unsubscribe(session, valid)
            else:
                session.control("error", code="bad_request", message=f"unknown type {kind!r}")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            session.control(
                "error",
                code="bad_request",
                message=f"expected {{'type': 'subscribe', 'channels': [...]}}; {detail}",
            )

    def _within_budget(self, session: Session, cost: int) -> bool:
        """Spend ``cost`` of the client's request budget, or refuse the request."""
        if cost <= 0:
            return True
        wait_s = session.requests.take(cost, time.monotonic())
        if wait_s:
            self._refuse(
                session,
                "rate_limited",
                f"more than {self.settings.requests_per_s:g} requests a second (a pattern "
                "counts as one); wait and send it again",
                retry_after_ms=math.ceil(wait_s * 1000),
            )
        return not wait_s

    def _refuse(self, session: Session, code: str, message: str, **fields: Any) -> None:
        metrics.GATEWAY_REFUSED.labels(code).inc()
        session.control("error", code=code, message=message, **fields)

    def _subscribe(self, session: Session, patterns: Iterable[str], request: Any) -> None:
        start = str(request.get("from", "$"))
        resume = {str(c): parse_id(str(i)) for c, i in (request.get("resume") or {}).items()}
        after = None if start == "$" else parse_id(start)
        admitted: list[str] = []
        for pattern in dict.fromkeys(patterns):
            if not session.grant.allows_pattern(pattern):
                metrics.GATEWAY_AUTH_FAILURES.labels("forbidden").inc()
                session.control(
                    "error",
                    code="forbidden",
                    channel=pattern,
                    message=f"your token does not grant {pattern!r}",
                )
            elif pattern not in session.patterns:
                admitted.append(pattern)
        held = len(session.patterns)
        if held + len(admitted) > self.settings.max_patterns:
            self._refuse(
                session,
                "too_many_patterns",
                f"this connection holds {held} patterns and asked for {len(admitted)} more; "
                f"at most {self.settings.max_patterns} (unsubscribe some first)",
            )
            return
        attached: dict[str, str] = {}
        for pattern in admitted:
            session.patterns.add(pattern)
            self.hub.patterns.add(pattern, session)
            for channel in self.hub.channels.matching(pattern):
                if channel in session.last:
                    continue
                since = resume.get(channel, after)
                if since is None:
                    self.hub.attach(session, channel, self.hub.positions[channel], catch_up=False)
                else:
                    self.hub.attach(
                        session, channel, since, catch_up=True, resumed=channel in resume
                    )
                attached[channel] = format_id(session.last[channel])
        session.control("subscribed", patterns=sorted(session.patterns), channels=attached)

    def _unsubscribe(self, session: Session, patterns: Iterable[str]) -> None:
        dropped = session.patterns.intersection(patterns)
        session.patterns.difference_update(dropped)
        for pattern in dropped:
            self.hub.patterns.discard(pattern, session)
        if dropped:
            for channel in [c for c in session.last if not session.wants(c)]:
                self.hub.detach(session, channel)
        session.control("unsubscribed", patterns=sorted(session.patterns))


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, cancelling again while a cancellation gets lost."""
    deadline = time.monotonic() + READER_STOP_S
    while not task.done() and time.monotonic() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.done():
        log.error("the stream reader did not stop; exiting without it")
        return
    # A reader that gave up on a setting raised it through run_until already.
    with contextlib.suppress(asyncio.CancelledError, ConfigError):
        await task


def _respond(
    connection: ServerConnection, status: HTTPStatus, body: bytes, content_type: str
) -> Response:
    response = connection.respond(status, "")
    for name, value in (("Content-Type", content_type), ("Content-Length", str(len(body)))):
        del response.headers[name]
        response.headers[name] = value
    response.body = body
    return response


def demo_page() -> bytes:
    """The live inventory page served at ``/``."""
    return importlib.resources.files("cdc_cache").joinpath("notify/web/demo.html").read_bytes()


async def serve_until_stopped(settings: GatewaySettings) -> None:
    """Run the gateway until SIGTERM or SIGINT, then close every connection and stop."""
    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    log.info(
        "gateway listening",
        extra={
            "url": f"http://{settings.host}:{gateway.port}/",
            "redis": redact_url(settings.redis_url),
        },
    )
    try:
        await gateway.run_until(stop)
    finally:
        log.info("gateway stopping")
        await gateway.stop()
