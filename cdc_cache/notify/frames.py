"""Stream entries as the gateway sends them: ids, and ``message`` frames encoded once (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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
