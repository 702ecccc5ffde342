"""Stream entries as the gateway sends them, and what a stream lost (pure).

Ids, ``message`` frames encoded once, and whether entries after an id may be gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

StreamId = tuple[int, int]
START: Final[StreamId] = (0, 0)


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


def lost_after(info: Mapping[str, Any], stream_id: StreamId, *, seen: bool = False) -> bool:
    """True when a stream (its XINFO STREAM) may have lost entries newer than ``stream_id``.

    Redis keeps no trim point (``max-deleted-entry-id`` follows XDEL alone): what MAXLEN
    trimmed is whatever came before the oldest entry left, and something was trimmed when
    more entries were ever added than are left. If what is left all comes after
    ``stream_id``, the trimmed entries may have too; whether they did is not kept, so that
    counts as lost. Without these fields (Redis before 7.0) nothing can be told.

    ``seen``: ``stream_id`` was read from this channel's stream (a client's resume id, the
    gateway's own position), not chosen (``from``). An id seen that comes before all the
    stream holds, though the stream never lost an entry, was in an earlier stream of the
    same name: Redis lost its data, and what came after that id with it.
    """
    deleted = info.get("max-deleted-entry-id")
    if deleted is not None and parse_id(deleted) > stream_id:
        return True
    added = info.get("entries-added")
    if added is None:
        return False
    first = info.get("first-entry")
    oldest_left = first[0] if first else info["last-generated-id"]
    if int(added) <= int(info["length"]) and not (seen and first):
        return False
    return parse_id(oldest_left) > stream_id
