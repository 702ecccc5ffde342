"""The gateway's reader: every channel's stream followed, each entry fanned out.

One task follows every stream with XREAD BLOCK (on a Redis Cluster, which refuses one
XREAD over several slots, one XREAD per slot, pipelined, polled) and hands each entry to the clients
subscribed to its channel; a new channel is compared once with each distinct pattern that
could match it (:class:`~cdc_cache.notify.patterns.PatternIndex`), however many clients
hold that pattern. A subscription that asks for the past replays the stream first. Where
a stream was trimmed past what a client was sent, the client is told (``gap``).

Kept in one module: discovery, replays and the reader all move the same positions and
subscriptions, and whether a client missed something depends on all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from functools import cache
from typing import Any, Final

import orjson
import redis.asyncio as aredis
from redis import exceptions as rex
from websockets.exceptions import ConnectionClosed

from cdc_cache.core import metrics
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.keys import key_slot, ns
from cdc_cache.core.retry import Backoff, retry_reporter
from cdc_cache.notify.frames import (
    START,
    Frame,
    StreamId,
    encode_frame,
    format_id,
    lost_after,
    parse_id,
)
from cdc_cache.notify.patterns import ChannelNames, PatternIndex
from cdc_cache.notify.session import Session, spawn
from cdc_cache.sink.connection import misconfiguration

log = logging.getLogger("cdc_cache.gateway")
_REPORT_RETRY = retry_reporter("redis", "redis unavailable, retrying", log)

READ_COUNT: Final = 1000
CATCH_UP_PAGE: Final = 1000
DISCOVER_TURN: Final = 200  # new channels attached between two turns of the event loop
CLUSTER_POLL_S: Final = 0.05  # on a Cluster, the wait after a read that found nothing


class Hub:
    """Follows every channel's stream and hands each entry to the channels' subscribers."""

    def __init__(
        self, client: aredis.Redis[bytes], *, block_ms: int = 1000, discover_s: float = 1.0
    ) -> None:
        self._redis = client
        self._cluster = isinstance(client, aredis.RedisCluster)
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
        # Set once every channel that existed at start is known, each at its end: before,
        # a subscription would miss the channels not known yet (and their resume ids).
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Make :meth:`run` return at its next step, even if a cancellation of it is lost.

        The Redis client waits with ``asyncio.wait_for``, which in Python 3.11 returns the
        result of a call that completed just as its caller was cancelled and drops the
        cancellation; on a Cluster, where every round makes several short calls, a reader
        cancelled once would otherwise go on reading forever.
        """
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when :meth:`stop` is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def discover(self) -> None:
        """Learn new channels: followed from their end until :attr:`ready`, then from their start.

        A channel that appears after the first complete look was created after the gateway
        started, so all its messages are new; subscribers whose patterns match it are
        attached at once (looked up in the pattern index, not by asking every client). A
        first look cut short by Redis is finished by the next, still from the channels' ends.
        """
        initial = not self.ready.is_set()
        names = {raw.decode() for raw in await self._redis.smembers(ns().channels)}
        for count, channel in enumerate(sorted(names - self.positions.keys() - self.broken)):
            self.positions[channel] = await self._end_of(channel) if initial else START
            self.channels.add(channel)
            for session in self.patterns.owners(channel):
                if channel not in session.last and not session.closed:
                    self.attach(session, channel, START, catch_up=False)
            if count % DISCOVER_TURN == DISCOVER_TURN - 1:
                await asyncio.sleep(0)  # thousands of new channels: let clients take turns
        self._discovered_at = time.monotonic()
        self.ready.set()

    async def _end_of(self, channel: str) -> StreamId:
        try:
            info = await self._redis.xinfo_stream(ns().stream_key(channel))
        except rex.ResponseError:  # no such stream (trimmed to nothing and deleted)
            return START
        return parse_id(info["last-generated-id"])

    def attach(
        self,
        session: Session,
        channel: str,
        after: StreamId,
        *,
        catch_up: bool,
        resumed: bool = False,
    ) -> None:
        """Subscribe ``session`` to ``channel`` after ``after``, replaying the stream first.

        ``resumed``: ``after`` is the last id the client saw of this channel (see
        :func:`~cdc_cache.notify.frames.lost_after`'s ``seen``).
        """
        session.last[channel] = after
        self.subscribers[channel].add(session)
        if catch_up:
            session.catching[channel] = []
            if resumed:
                session.resumed.add(channel)
            if not session.replaying:
                session.replaying = True
                spawn(self._replay(session))

    def detach(self, session: Session, channel: str) -> None:
        """Stop sending ``channel`` to ``session``."""
        session.last.pop(channel, None)
        session.resumed.discard(channel)
        session.release(channel)
        self.subscribers[channel].discard(session)

    def remove(self, session: Session) -> None:
        """Forget a client that went away."""
        self.sessions.discard(session)
        for pattern in session.patterns:
            self.patterns.discard(pattern, session)
        for channel in list(session.last):
            self.detach(session, channel)

    async def _replay(self, session: Session) -> None:
        """Replay the channels ``session`` asked the past of, one after the other.

        They all go to one socket, so replaying them at once would not deliver sooner; it
        would hold a page per channel while the client reads, and a client that asks for
        the past of thousands of channels and then reads slowly would hold thousands.
        """
        try:
            while session.catching and not session.closed:
                channel = next(iter(session.catching))
                seen = channel in session.resumed
                session.resumed.discard(channel)
                await self._catch_up(session, channel, session.last[channel], seen=seen)
        finally:
            session.replaying = False

    async def _catch_up(
        self, session: Session, channel: str, after: StreamId, *, seen: bool
    ) -> None:
        """Send what the stream holds after ``after``, then the live messages held back.

        Sent straight to the socket, so a long replay waits for the client (it is what it
        asked for) instead of filling the queue that live messages of other channels use.
        Each page is read from the last id sent, that id included: while it is still there
        nothing after it was trimmed; when it is gone and newer entries were trimmed too
        (the stream moved on while the client read), a ``gap`` goes out before what follows.
        ``seen``: ``after`` is the client's resume id; a stream that has lost it, or that no
        longer exists, lost what followed it too (Redis lost its data).
        """
        key = ns().stream_key(channel)
        cursor = after
        try:
            while session.catching.get(channel) is not None:
                page = await self._redis.xrange(key, min=format_id(cursor), count=CATCH_UP_PAGE)
                more = len(page) == CATCH_UP_PAGE
                if page and parse_id(page[0][0]) == cursor:
                    del page[0]
                elif cursor != START and await self._lost(key, cursor, seen=seen):
                    gap = {"type": "gap", "channel": channel, "after": format_id(cursor)}
                    await session.ws.send(orjson.dumps(gap), text=True)
                for raw_id, fields in page:
                    frame = _frame(channel, raw_id, fields)
                    if frame is not None and session.advance(frame):
                        await session.ws.send(frame.data, text=True)
                        metrics.GATEWAY_MESSAGES_OUT.inc()
                if not more:
                    break
                cursor, seen = parse_id(page[-1][0]), True
        except rex.ResponseError:
            pass  # the key is no stream: the hub stops following it
        except (rex.RedisError, ConnectionClosed) as exc:
            session.drop("catch_up_failed", f"replay of {channel} failed: {exc}")
            return
        for frame in session.release(channel):
            session.offer(frame)

    async def _lost(self, key: str, cursor: StreamId, *, seen: bool) -> bool:
        """True when the stream at ``key`` may have lost entries after ``cursor``.

        A stream that does not exist lost them if ``cursor`` was seen in it.
        """
        try:
            info = await self._redis.xinfo_stream(key)
        except rex.ResponseError:
            if await self._redis.exists(key):
                raise
            return seen
        return lost_after(info, cursor, seen=seen)

    async def run(self) -> None:
        """Read and fan out until stopped; Redis outages are retried with backoff.

        Refused credentials or a missing permission raise ConfigError: no wait fixes them.
        """
        backoff, attempt, rng = Backoff(maximum=5.0), 0, random.Random()
        while not self._stopping.is_set():
            try:
                if not self.healthy or time.monotonic() - self._discovered_at > self._discover_s:
                    await self.discover()
                await self._read_once()
                self.healthy, attempt = True, 0
            except rex.ResponseError as exc:  # e.g. WRONGTYPE: a channel key that is no stream
                stop_if_misconfigured(exc)
                await self._forget_broken_channels(exc)
                await self._pause(self._block_ms / 1000)
            except (
                rex.ConnectionError,
                rex.TimeoutError,
                rex.ClusterError,  # a Cluster's slot moving or down
                rex.RedisClusterException,  # no Cluster node reachable
                OSError,
            ) as exc:
                stop_if_misconfigured(exc)
                self.healthy, attempt = False, attempt + 1
                delay = backoff.delay(attempt, rng)
                _REPORT_RETRY(attempt, delay, exc)
                await self._pause(delay)

    async def _forget_broken_channels(self, error: rex.ResponseError) -> None:
        """Stop following channels whose key holds something else than a stream.

        One such key would fail every XREAD, and with it every other channel.
        """
        for channel in list(self.positions):
            kind = await self._redis.type(ns().stream_key(channel))  # type: ignore[no-untyped-call]
            if kind not in (b"stream", b"none"):
                del self.positions[channel]
                self.channels.remove(channel)
                self.broken.add(channel)
                for session in tuple(self.subscribers.get(channel, ())):
                    self.detach(session, channel)
                self.subscribers.pop(channel, None)
                log.error(
                    "not following a channel: its key is no stream (written by something else "
                    "than the apply script?); delete the key or rename what uses it",
                    extra={
                        "key": ns().stream_key(channel),
                        "type": kind.decode(),
                        "error": str(error),
                    },
                )

    async def _read_once(self) -> None:
        if not self.positions:
            await self._pause(self._block_ms / 1000)
            return
        streams = {ns().stream_key(c): format_id(p) for c, p in self.positions.items()}
        if self._cluster:
            replies = await self._read_slots(streams)
        else:
            replies = await self._redis.xread(streams, count=READ_COUNT, block=self._block_ms)
        read = [
            (raw_key.decode().removeprefix(ns().stream_prefix), entries)
            for raw_key, entries in replies or ()
            if entries
        ]
        for channel in await self._trimmed_unread([channel for channel, _ in read]):
            self._tell_gap(channel)
        now_ms = time.time() * 1000
        for channel, entries in read:
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

    async def _trimmed_unread(self, channels: list[str]) -> list[str]:
        """Those of ``channels`` whose stream was trimmed past where the reader stood.

        Asked after a read, before its entries go out: the reader fell more than a stream's
        ``maxlen`` behind (Redis away while the worker wrote, a long pause), and the entries
        between its position and the first one read are gone. A stream trimmed only after
        the read, below an entry just read, counts too: then the reader is at the edge of
        the window, where it cannot tell.
        """
        if not channels:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for channel in channels:
            pipe.xinfo_stream(ns().stream_key(channel))
        infos = await pipe.execute(raise_on_error=False)
        return [
            channel
            for channel, info in zip(channels, infos, strict=True)
            if isinstance(info, dict)
            and lost_after(info, self.positions[channel], seen=self.positions[channel] != START)
        ]

    def _tell_gap(self, channel: str) -> None:
        """Tell the live subscribers of ``channel`` that messages after their last were lost.

        Those replaying it read the stream themselves, and see the trim there.
        """
        log.warning(
            "the gateway fell behind a channel's stream, which was trimmed past it: its "
            "subscribers are told to reload (gap)",
            extra={"channel": channel, "after": format_id(self.positions[channel])},
        )
        for session in tuple(self.subscribers.get(channel, ())):
            last = session.last.get(channel)
            if last is not None and channel not in session.catching:
                session.control("gap", channel=channel, after=format_id(last))

    async def _read_slots(self, streams: dict[str, str]) -> list[Any]:
        """XREAD on a Cluster: one call per slot (it refuses keys of several), pipelined.

        Without BLOCK, which would hold each slot's call in turn; an empty round waits
        CLUSTER_POLL_S before the next.
        """
        by_slot: defaultdict[int, dict[str, str]] = defaultdict(dict)
        for key, after in streams.items():
            by_slot[key_slot(key)][key] = after
        pipe = self._redis.pipeline()
        for group in by_slot.values():
            pipe.xread(group, count=READ_COUNT)
        replies = [reply for found in await pipe.execute() for reply in found or ()]
        if not replies:
            await self._pause(min(CLUSTER_POLL_S, self._block_ms / 1000))
        return replies


def _frame(channel: str, raw_id: bytes, fields: dict[bytes, bytes]) -> Frame | None:
    try:
        return encode_frame(channel, parse_id(raw_id), fields[b"p"])
    except (KeyError, ValueError):
        log.error(
            "skipping a malformed stream entry (not written by the apply script?)",
            extra={"channel": channel, "id": raw_id.decode(errors="replace")},
        )
        return None


@cache
def stop_if_misconfigured(exc: BaseException) -> None:
    """Raise ConfigError when ``exc`` says a setting is wrong (credentials, ACL, TLS)."""
    if misconfiguration(exc) is not None:
        msg = (
            f"Redis refused the gateway ({exc}); fix the user, password or TLS options in "
            "redis_url (--redis-url, CDC_CACHE_GATEWAY_REDIS_URL)"
        )
        raise ConfigError(msg) from None
