"""Typed errors: what may be retried versus what must go to the dead-letter path.

A transient error is retried with backoff and never skipped (skipping an invalidation
serves a stale row). A poison error is about one message: it is set aside with its reason
and the stream goes on.
"""

from __future__ import annotations

from collections.abc import Iterator

from cdc_cache.core.events import SourceRecord


class CdcCacheError(Exception):
    """Base of every error raised by cdc-cache."""


class ConfigError(CdcCacheError):
    """Bad settings or rules: startup stops with the file, line and what to fix."""


class TransientError(CdcCacheError):
    """A server was unreachable or timed out; the same work will succeed on retry.

    ``kind`` names the server, which picks the retry policy (settings ``retry_<kind>``).
    """

    kind = "transient"


class RedisUnavailable(TransientError):
    """Redis (or a Redis Cluster node) is unreachable, timed out, or is resharding."""

    kind = "redis"


class BrokerUnavailable(TransientError):
    """A Kafka broker is unreachable, timed out, or did not acknowledge a write."""

    kind = "kafka"


class ApplyError(CdcCacheError):
    """Redis refused a batch for a reason a retry will not fix.

    A script error, a key holding a type the op cannot overwrite (WRONGTYPE), or an op with
    a non-positive TTL. The batch's ops are version-gated, so the caller may split it to
    find the op at fault and dead-letter that op alone.
    """


class PoisonMessage(CdcCacheError):
    """One message cannot be processed, now or on retry.

    ``record`` names the topic/partition/offset it came from once it is known.
    """

    kind = "poison"

    def __init__(self, reason: str, record: SourceRecord | None = None) -> None:
        self.reason = reason
        self.record = record
        super().__init__(self._render())

    def _render(self) -> str:
        where = f" at {self.record.where()}" if self.record is not None else ""
        return f"{self.kind}{where}: {self.reason}"

    def at(self, record: SourceRecord) -> PoisonMessage:
        """Attach the message coordinates (returns self, for ``raise err.at(rec)``)."""
        self.record = record
        self.args = (self._render(),)
        return self


class DecodeError(PoisonMessage):
    """The message is not a Debezium record this decoder understands."""

    kind = "undecodable"


class MissingPrimaryKey(PoisonMessage):
    """A change event without a primary key cannot be mapped to cache keys."""

    kind = "no_primary_key"


class RenderError(PoisonMessage):
    """A rule cannot render a key or value for this row (e.g. a column is absent)."""

    kind = "render_failed"


class RefusedByRedis(PoisonMessage):
    """Redis refused this change's writes for a reason a retry cannot fix (e.g. WRONGTYPE)."""

    kind = "redis_refused"


class ValueTooLarge(PoisonMessage):
    """A projected row image exceeds the worker's ``max_value_bytes``."""

    kind = "value_too_large"


class Unprocessable(PoisonMessage):
    """Handling this message raised an error that no check anticipated.

    E.g. values nested too deeply to encode: the message is set aside with that error
    and its stack, and the stream goes on.
    """

    kind = "unprocessable"


POISON_KINDS = tuple(
    cls.kind
    for cls in (
        DecodeError,
        MissingPrimaryKey,
        RenderError,
        RefusedByRedis,
        ValueTooLarge,
        Unprocessable,
    )
)


class StopRequested(CdcCacheError):
    """The worker was asked to stop while waiting to retry; the batch will be replayed."""


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then each error it was raised from (``__cause__``, else ``__context__``).

    Libraries wrap the error that matters (a refused password inside a connection error,
    a setting problem inside the engine's): callers look for it along this chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
