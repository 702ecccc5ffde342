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
``data``: the change), ``gap`` (messages after the resume id were trimmed away),
``heartbeat``, ``pong`` and ``error`` (``code``: forbidden | bad_request |
too_many_patterns | rate_limited).

One client cannot make the gateway slow for the others: a connection holds at most
``max_patterns`` patterns and is served ``requests_per_s`` requests a second (a pattern
named in a request counts as one), patterns match in linear time
(:mod:`cdc_cache.notify.patterns`), and a new channel is compared once with each distinct pattern
that could match it, however many clients hold that pattern.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import math
import random
import signal
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
import redis.asyncio as aredis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import exceptions as rex
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from cdc_cache.app.settings import GatewaySettings
from cdc_cache.core import metrics
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.keys import CHANNELS_KEY, STREAM_PREFIX, stream_key
from cdc_cache.core.redact import redact_url
from cdc_cache.core.retry import Backoff, retry_reporter
from cdc_cache.fallback.watchdog import Watchdog
from cdc_cache.notify.patterns import ChannelNames, PatternIndex, matches, validate_pattern
from cdc_cache.notify.rate_limit import TokenBucket
from cdc_cache.notify.tokens import Grant, TokenError, verify
from cdc_cache.sink.apply import connect, misconfiguration
from cdc_cache.sink.sentinel import connect_async

log = logging.getLogger("cdc_cache.gateway")
_REPORT_RETRY = retry_reporter("redis", "redis unavailable, retrying", log)

StreamId = tuple[int, int]
START: Final[StreamId] = (0, 0)
SLOW_CLOSE_CODE: Final = 4008  # the client fell behind: reconnect and resume
EXPIRED_CLOSE_CODE: Final = 4001  # the token expired: reconnect with a fresh one
READ_COUNT: Final = 1000
CATCH_UP_PAGE: Final = 1000
DISCOVER_TURN: Final = 200  # new channels attached between two turns of the event loop


def parse_id(text: str | bytes) -> StreamId:
    """``1700000000000-3`` (or ``1700000000000``) as a comparable pair; ValueError if not."""
    raw = text.decode() if isinstance(text, bytes) else text
    ms, _, seq = raw.partition("-")
    parsed = (int(ms), int(seq or 0))
    if min(parsed) < 0:
        msg = f"stream id {raw!r} is negative"
        raise ValueError(msg)
    return parsed


def format_id(stream_id: StreamId) -> str:
    """The Redis form of a stream id."""
    return f"{stream_id[0]}-{stream_id[1]}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One notification, encoded once for every client that receives it."""

    channel: str
    id: StreamId
    data: bytes
    committed_at_ms: float | None = None


def encode_frame(channel: str, stream_id: StreamId, payload: bytes) -> Frame:
    """The ``message`` frame for a stream entry; ValueError when the payload is not JSON."""
    change = orjson.loads(payload)  # never pass a broken document on to every client
    committed = change.get("committed_at_ms") if isinstance(change, dict) else None
    data = b"".join(
        (
            b'{"type":"message","channel":',
            orjson.dumps(channel),
            b',"id":"',
            format_id(stream_id).encode(),
            b'","data":',
            payload,
            b"}",
        )
    )
    return Frame(
        channel, stream_id, data, committed if isinstance(committed, int | float) else None
    )


class Session:
    """One connected client: its grant, subscriptions, per-channel last id and queue.

    ``last`` holds, per subscribed channel, the id of the newest message handed to the
    client: nothing at or below it is sent again, which makes resuming exact. While a
    channel catches up from its stream, its live messages wait in ``catching``.
    """

    def __init__(
        self,
        ws: ServerConnection,
        grant: Grant,
        queue_size: int,
        requests: TokenBucket,
    ) -> None:
        self.ws = ws
        self.grant = grant
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.requests = requests  # this client's request budget
        self.patterns: set[str] = set()
        self.last: dict[str, StreamId] = {}
        self.catching: dict[str, list[Frame]] = {}
        self.closed = False

    def wants(self, channel: str) -> bool:
        """True when a pattern of this client matches ``channel``.

        Patterns are admitted only when the grant covers them, so every channel they
        match is granted.
        """
        return any(matches(p, channel) for p in self.patterns)

    def offer(self, frame: Frame) -> None:
        """Queue a live message without ever waiting; a full queue drops the client."""
        waiting = self.catching.get(frame.channel)
        if waiting is not None:
            if len(waiting) >= self.queue.maxsize:
                self.drop("slow", f"more than {self.queue.maxsize} messages behind")
            waiting.append(frame)
        elif self.advance(frame):
            self.send(frame.data)

    def advance(self, frame: Frame) -> bool:
        """Record ``frame`` as handed over; False when the client has (or wants not) it."""
        last = self.last.get(frame.channel)
        if self.closed or last is None or frame.id <= last:
            return False
        self.last[frame.channel] = frame.id
        return True

    def send(self, data: bytes) -> None:
        """Queue a frame; a client whose queue is full is dropped with a reason."""
        if self.closed:
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.drop("slow", f"more than {self.queue.maxsize} messages queued")
        else:
            metrics.GATEWAY_MESSAGES_OUT.inc()

    def control(self, kind: str, **fields: Any) -> None:
        """Queue a protocol message (welcome, error, heartbeat, ...)."""
        self.send(orjson.dumps({"type": kind, **fields}))

    def drop(self, reason: str, detail: str, code: int = SLOW_CLOSE_CODE) -> None:
        """Disconnect the client at once, with a close code and reason it can act on."""
        if self.closed:
            return
        self.closed = True
        metrics.GATEWAY_DROPS.labels(reason).inc()
        log.warning("dropping client", extra={"reason": reason, "detail": detail})
        text = f"{detail}; reconnect and resume from the last id you saw"
        _spawn(_close(self.ws, code, text[:120]))

    async def pump(self) -> None:
        """Send queued frames in order until the client goes away or is dropped."""
        while not self.closed:
            data = await self.queue.get()
            if self.closed:
                return
            await self.ws.send(data, text=True)


_tasks: set[asyncio.Task[None]] = set()


def _spawn(coro: Any) -> None:
    """Run ``coro`` in the background, keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _close(ws: ServerConnection, code: int, reason: str) -> None:
    """Close politely, or cut the connection when the client does not answer in time."""
    try:
        await asyncio.wait_for(ws.close(code, reason), timeout=2)
    except TimeoutError:
        ws.transport.abort()


class Hub:
    """Follows every channel's stream and hands each entry to the channels' subscribers."""

    def __init__(
        self, client: aredis.Redis[bytes], *, block_ms: int = 1000, discover_s: float = 1.0
    ) -> None:
        self._redis = client
        self._block_ms = block_ms
        self._discover_s = discover_s
        self.positions: dict[str, StreamId] = {}
        self.channels = ChannelNames()  # the keys of positions, sorted
        self.patterns: PatternIndex[Session] = PatternIndex()
        self.subscribers: defaultdict[str, set[Session]] = defaultdict(set)
        self.sessions: set[Session] = set()
        self.healthy = False
        self._discovered_at = 0.0
        self.broken: set[str] = set()  # channels whose key is no stream: not followed

    async def discover(self, *, initial: bool = False) -> None:
        """Learn new channels; at start each is followed from its end, later from its start.

        A channel that appears after the gateway started was created after it, so all
        its messages are new; subscribers whose patterns match it are attached at once
        (looked up in the pattern index, not by asking every client).
        """
        names = {raw.decode() for raw in await self._redis.smembers(CHANNELS_KEY)}
        for count, channel in enumerate(sorted(names - self.positions.keys() - self.broken)):
            self.positions[channel] = await self._end_of(channel) if initial else START
            self.channels.add(channel)
            for session in self.patterns.owners(channel):
                if channel not in session.last and not session.closed:
                    self.attach(session, channel, START, catch_up=False)
            if count % DISCOVER_TURN == DISCOVER_TURN - 1:
                await asyncio.sleep(0)  # thousands of new channels: let clients take turns
        self._discovered_at = time.monotonic()

    async def _end_of(self, channel: str) -> StreamId:
        try:
            info = await self._redis.xinfo_stream(stream_key(channel))
        except rex.ResponseError:  # no such stream (trimmed to nothing and deleted)
            return START
        return parse_id(info["last-generated-id"])

    def attach(self, session: Session, channel: str, after: StreamId, *, catch_up: bool) -> None:
        """Subscribe ``session`` to ``channel`` after ``after``, replaying the stream first."""
        session.last[channel] = after
        self.subscribers[channel].add(session)
        if catch_up:
            session.catching[channel] = []
            _spawn(self._catch_up(session, channel, after))

    def detach(self, session: Session, channel: str) -> None:
        """Stop sending ``channel`` to ``session``."""
        session.last.pop(channel, None)
        session.catching.pop(channel, None)
        self.subscribers[channel].discard(session)

    def remove(self, session: Session) -> None:
        """Forget a client that went away."""
        self.sessions.discard(session)
        for pattern in session.patterns:
            self.patterns.discard(pattern, session)
        for channel in list(session.last):
            self.detach(session, channel)

    async def _catch_up(self, session: Session, channel: str, after: StreamId) -> None:
        """Send what the stream holds after ``after``, then the live messages held back.

        Sent straight to the socket, so a long replay waits for the client (it is what it
        asked for) instead of filling the queue that live messages of other channels use.
        """
        key = stream_key(channel)
        try:
            if after != START:
                info = await self._redis.xinfo_stream(key)
                trimmed = info.get("max-deleted-entry-id")
                if trimmed is not None and parse_id(trimmed) > after:
                    session.control("gap", channel=channel, after=format_id(after))
            cursor = f"({format_id(after)}"
            while session.catching.get(channel) is not None:
                page = await self._redis.xrange(key, min=cursor, count=CATCH_UP_PAGE)
                for raw_id, fields in page:
                    frame = _frame(channel, raw_id, fields)
                    if frame is not None and session.advance(frame):
                        await session.ws.send(frame.data, text=True)
                        metrics.GATEWAY_MESSAGES_OUT.inc()
                if len(page) < CATCH_UP_PAGE:
                    break
                cursor = f"({page[-1][0].decode()}"
        except rex.ResponseError:
            pass  # the stream does not exist (yet): nothing to replay
        except (rex.RedisError, ConnectionClosed) as exc:
            session.drop("catch_up_failed", f"replay of {channel} failed: {exc}")
            return
        for frame in session.catching.pop(channel, None) or ():
            session.offer(frame)

    async def run(self) -> None:
        """Read and fan out until cancelled; Redis outages are retried with backoff.

        Refused credentials or a missing permission raise ConfigError: no wait fixes them.
        """
        backoff, attempt, rng = Backoff(maximum=5.0), 0, random.Random()
        while True:
            try:
                if not self.healthy or time.monotonic() - self._discovered_at > self._discover_s:
                    await self.discover(initial=not self.healthy and not self.positions)
                await self._read_once()
                self.healthy, attempt = True, 0
            except rex.ResponseError as exc:  # e.g. WRONGTYPE: a channel key that is no stream
                _stop_if_misconfigured(exc)
                await self._forget_broken_channels(exc)
                await asyncio.sleep(self._block_ms / 1000)
            except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
                _stop_if_misconfigured(exc)
                self.healthy, attempt = False, attempt + 1
                delay = backoff.delay(attempt, rng)
                _REPORT_RETRY(attempt, delay, exc)
                await asyncio.sleep(delay)

    async def _forget_broken_channels(self, error: rex.ResponseError) -> None:
        """Stop following channels whose key holds something else than a stream.

        One such key would fail every XREAD, and with it every other channel.
        """
        for channel in list(self.positions):
            kind = await self._redis.type(stream_key(channel))  # type: ignore[no-untyped-call]
            if kind not in (b"stream", b"none"):
                del self.positions[channel]
                self.channels.remove(channel)
                self.broken.add(channel)
                for session in tuple(self.subscribers.pop(channel, ())):
                    session.last.pop(channel, None)
                log.error(
                    "not following a channel: its key is no stream (written by something else "
                    "than the apply script?); delete the key or rename what uses it",
                    extra={"key": stream_key(channel), "type": kind.decode(), "error": str(error)},
                )

    async def _read_once(self) -> None:
        if not self.positions:
            await asyncio.sleep(self._block_ms / 1000)
            return
        streams = {stream_key(c): format_id(p) for c, p in self.positions.items()}
        replies = await self._redis.xread(streams, count=READ_COUNT, block=self._block_ms)
        now_ms = time.time() * 1000
        for raw_key, entries in replies or ():
            channel = raw_key.decode().removeprefix(STREAM_PREFIX)
            for raw_id, fields in entries:
                self.positions[channel] = parse_id(raw_id)
                frame = _frame(channel, raw_id, fields)
                if frame is None:
                    continue
                for session in tuple(self.subscribers.get(channel, ())):
                    session.offer(frame)
                if frame.committed_at_ms is not None:
                    lag_s = max(0.0, now_ms - frame.committed_at_ms) / 1000
                    metrics.GATEWAY_DELIVERY.observe(lag_s)
                # Let every client's sender take its turn, so a burst read in one XREAD
                # fills only the queues of clients that really cannot keep up.
                await asyncio.sleep(0)


def _frame(channel: str, raw_id: bytes, fields: dict[bytes, bytes]) -> Frame | None:
    try:
        return encode_frame(channel, parse_id(raw_id), fields[b"p"])
    except (KeyError, ValueError):
        log.error(
            "skipping a malformed stream entry (not written by the apply script?)",
            extra={"channel": channel, "id": raw_id.decode(errors="replace")},
        )
        return None


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
            _stop_if_misconfigured(exc)
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
        """Close every connection (1001 going away), stop reading, release Redis."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._reader is not None:
            self._reader.cancel()
            # A reader that gave up on a setting raised it through run_until already.
            with contextlib.suppress(asyncio.CancelledError, ConfigError):
                await self._reader
        if self.watchdog is not None:
            await asyncio.to_thread(self.watchdog.close)
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
                    self.hub.attach(session, channel, since, catch_up=True)
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


def _respond(
    connection: ServerConnection, status: HTTPStatus, body: bytes, content_type: str
) -> Response:
    response = connection.respond(status, "")
    for name, value in (("Content-Type", content_type), ("Content-Length", str(len(body)))):
        del response.headers[name]
        response.headers[name] = value
    response.body = body
    return response


@cache
def _stop_if_misconfigured(exc: BaseException) -> None:
    """Raise ConfigError when ``exc`` says a setting is wrong (credentials, ACL, TLS)."""
    if misconfiguration(exc) is not None:
        msg = (
            f"Redis refused the gateway ({exc}); fix the user, password or TLS options in "
            "redis_url (--redis-url, CDC_CACHE_GATEWAY_REDIS_URL)"
        )
        raise ConfigError(msg) from None


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
