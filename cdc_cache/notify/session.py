"""One connected client of the gateway: its grant, subscriptions, last ids and queue.

A client that cannot keep up is disconnected with a reason (close code 4008) instead of
slowing the others, and reconnects with the last id it saw.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import orjson
from websockets.asyncio.server import ServerConnection

from cdc_cache.core import metrics
from cdc_cache.notify.frames import Frame, StreamId
from cdc_cache.notify.patterns import matches
from cdc_cache.notify.rate_limit import TokenBucket
from cdc_cache.notify.tokens import Grant

log = logging.getLogger("cdc_cache.gateway")

SLOW_CLOSE_CODE: Final = 4008  # the client fell behind: reconnect and resume
EXPIRED_CLOSE_CODE: Final = 4001  # the token expired: reconnect with a fresh one
CLOSE_TIMEOUT_S: Final = 2.0  # a client that does not answer a close in time is cut off


class Session:
    """One connected client: its grant, subscriptions, per-channel last id and queue.

    ``last`` holds, per subscribed channel, the id of the newest message handed to the
    client: nothing at or below it is sent again, which makes resuming exact. While a
    channel catches up from its stream, its live messages wait in ``catching``; the
    channels there are replayed one after the other while ``replaying``.
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
        self.resumed: set[str] = set()  # channels waiting to replay from a resume id
        self.held = 0  # live messages waiting in ``catching``, over every channel
        self.replaying = False
        self.closed = False

    def wants(self, channel: str) -> bool:
        """True when a pattern of this client matches ``channel``.

        Patterns are admitted only when the grant covers them, so every channel they
        match is granted.
        """
        return any(matches(p, channel) for p in self.patterns)

    def offer(self, frame: Frame) -> None:
        """Queue a live message without ever waiting; a full queue drops the client.

        Messages held back while their channels catch up count against the same bound,
        over all of those channels: a client replaying thousands of busy channels holds
        ``queue_size`` messages at most, not that many per channel.
        """
        waiting = self.catching.get(frame.channel)
        if waiting is not None:
            if self.held >= self.queue.maxsize:
                self.drop("slow", f"more than {self.queue.maxsize} messages behind")
                return
            waiting.append(frame)
            self.held += 1
        elif self.advance(frame):
            self.send(frame.data)

    def release(self, channel: str) -> list[Frame]:
        """End the catching up of ``channel``: the live messages held back for it."""
        waiting = self.catching.pop(channel, None) or []
        self.held -= len(waiting)
        return waiting

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
        spawn(_close(self.ws, code, text[:120]))

    async def pump(self) -> None:
        """Send queued frames in order until the client goes away or is dropped."""
        while not self.closed:
            data = await self.queue.get()
            if self.closed:
                return
            await self.ws.send(data, text=True)


_tasks: set[asyncio.Task[None]] = set()


def spawn(coro: Any) -> None:
    """Run ``coro`` in the background, keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _close(ws: ServerConnection, code: int, reason: str) -> None:
    """Close politely, or cut the connection when the client does not answer in time."""
    try:
        await asyncio.wait_for(ws.close(code, reason), timeout=CLOSE_TIMEOUT_S)
    except TimeoutError:
        ws.transport.abort()
