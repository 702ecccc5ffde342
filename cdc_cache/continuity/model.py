"""Source continuity: whether a stored Kafka offset still means what it meant (pure).

The worker resumes each partition from the offset in its recovery store. That offset stops
meaning anything when the topic was deleted and recreated (a new topic id, a log starting
again at 0), or when retention removed records the worker never read (the log now starts
above it). Left alone, a Kafka client resets such an offset, or a broker simply serves what
it has (tansu does), and every change in between is skipped without a trace. So each
partition keeps its topic's identity next to the offset in its snapshot
(:class:`SourceState`), and :func:`check` compares it with what the broker reports, at
start, on every partition assignment and while running. A broken rule is a
:class:`Discontinuity`: the worker holds ``ttl`` mode until an operator decides how to
go on (:class:`Action`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

from cdc_cache.core.errors import ConfigError

STATE_FORMAT: Final = 1
# The logical offsets a snapshot may hold before anything was read (confluent_kafka's
# OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED, OFFSET_INVALID are all negative).
_NOTHING_READ: Final = 0


class Kind(StrEnum):
    """Which continuity rule broke (a bounded metric label)."""

    TOPIC_RECREATED = "topic_recreated"  # another topic id, or the topic is gone
    LOG_TRUNCATED = "log_truncated"  # the log ends below what was read or seen
    BELOW_LOG_START = "below_log_start"  # records the worker never read were removed


class Action(StrEnum):
    """An operator's way forward from a discontinuity (``cdc-cache continuity``)."""

    REREAD = "reread"  # read the topic again from its start; ttl until caught up
    ACCEPT = "accept"  # go on from the topic's start; the gap is accepted, ttl ends now


@dataclass(frozen=True, slots=True)
class SourceState:
    """What one partition's recovery snapshot holds.

    ``offset``: the next offset to read (None: nothing read yet, start at the log start).
    ``topic_id``: the topic's id when the offset was taken (None: unknown, from a broker
    without topic ids or a store written before ids were kept). ``high``: the highest
    high watermark seen on that topic; a log never ends below it. ``reread_until``: set
    while re-reading after a discontinuity, the offset the re-read must reach before the
    hold ends (``-1``: the first fetch of the re-read has not told the high watermark yet).
    """

    offset: int | None
    topic_id: str | None = None
    high: int | None = None
    reread_until: int | None = None

    @property
    def rereading(self) -> bool:
        """True while a re-read ordered by an operator has not caught up."""
        return self.reread_until is not None

    def read_to(self, offset: int | None, high: int | None) -> SourceState:
        """After a batch: the next offset to read and the highest watermark seen."""
        if high is not None and (self.high is None or high > self.high):
            return replace(self, offset=offset, high=high)
        return replace(self, offset=offset)

    def dump(self) -> dict[str, Any]:
        """The snapshot Bytewax stores (plain data, so the store outlives module moves)."""
        return {
            "format": STATE_FORMAT,
            "offset": self.offset,
            "topic_id": self.topic_id,
            "high": self.high,
            "reread_until": self.reread_until,
        }


def load_state(raw: object) -> SourceState:
    """A partition's snapshot as Bytewax hands it back.

    Besides this module's own format, a bare offset (or None) is what Bytewax's
    KafkaSource stored before identities were kept: it is migrated with the identity
    unknown, so the broker's id is adopted at the first check while the watermark rules
    still apply. Anything else stops the worker rather than guess where to resume.
    """
    if raw is None:
        return SourceState(None)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return SourceState(raw if raw >= _NOTHING_READ else None)
    if isinstance(raw, dict) and raw.get("format") == STATE_FORMAT:
        try:
            return SourceState(
                _optional_int(raw.get("offset")),
                _optional_str(raw.get("topic_id")),
                _optional_int(raw.get("high")),
                _optional_int(raw.get("reread_until")),
            )
        except TypeError as exc:
            msg = f"recovery store: a source partition's snapshot is malformed ({exc}): {raw!r}"
            raise ConfigError(msg) from None
    msg = (
        f"recovery store: a source partition's snapshot has an unknown format: {raw!r}; "
        "it was written by a newer release, or is not a cdc-cache recovery store"
    )
    raise ConfigError(msg)


def _optional_int(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    msg = f"expected an integer or null, got {value!r}"
    raise TypeError(msg)


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    msg = f"expected a string or null, got {value!r}"
    raise TypeError(msg)


GONE_AFTER_ANSWERS: Final = 3
GONE_AFTER_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Absence:
    """A run of consecutive broker answers that a topic is unknown.

    Brokers answer so for a while during a leader election, while a topic's metadata
    propagates, or while a broker restarts: one answer proves nothing. The topic counts as
    gone only once at least ``GONE_AFTER_ANSWERS`` answers in a row over at least
    ``GONE_AFTER_S`` seconds said so (a recreated topic shows sooner, by its new id).
    ``since``: when the first of them came (the ids' clock).
    """

    since: float
    answers: int = 1

    def gone(self, now: float) -> bool:
        """True once the run is long enough, in answers and in time, to judge the topic gone."""
        return self.answers >= GONE_AFTER_ANSWERS and now - self.since >= GONE_AFTER_S


def unknown_again(before: Absence | None, now: float) -> Absence:
    """The run after one more answer at ``now`` that the topic is unknown."""
    return Absence(now) if before is None else replace(before, answers=before.answers + 1)


@dataclass(frozen=True, slots=True)
class Observed:
    """What the broker says about a partition now.

    ``exists``: the topic is there at all. ``topic_id``: None when the broker reports
    none. ``log_start``/``high``: the first offset the log holds and its high watermark
    (None while unknown: no fetch answered yet). ``out_of_range``: the broker refused the
    offset as out of range (the client's reset policy is ``error``, so it says so).
    ``truncated``: the client found the log truncated below its position (leader epochs).
    """

    topic_id: str | None
    exists: bool = True
    log_start: int | None = None
    high: int | None = None
    out_of_range: bool = False
    truncated: bool = False


def check(stored: SourceState, observed: Observed) -> Kind | None:
    """The continuity rule ``observed`` breaks for ``stored``, or None if the offset holds.

    Topic ids are compared only when both sides have one; without them the watermarks
    still catch a log that restarted below what was read or seen, and one whose start
    moved past the stored offset.
    """
    if not observed.exists:
        return Kind.TOPIC_RECREATED
    if stored.topic_id and observed.topic_id and stored.topic_id != observed.topic_id:
        return Kind.TOPIC_RECREATED
    if stored.offset is None:
        return None  # nothing read yet: the log start is where reading begins anyway
    if observed.truncated or (
        observed.high is not None
        and (
            observed.high < stored.offset
            or (stored.high is not None and observed.high < stored.high)
        )
    ):
        return Kind.LOG_TRUNCATED
    if observed.out_of_range or (
        observed.log_start is not None and observed.log_start > stored.offset
    ):
        return Kind.BELOW_LOG_START
    return None


def reread_caught_up(state: SourceState) -> bool:
    """A re-read is over once its next offset reached the mark set when it started."""
    return (
        state.reread_until is not None
        and state.reread_until >= 0
        and state.offset is not None
        and state.offset >= state.reread_until
    )


@dataclass(frozen=True, slots=True)
class Discontinuity:
    """A partition whose stored offset no longer means what it meant."""

    kind: Kind
    topic: str
    partition: int
    stored: SourceState
    observed: Observed

    @property
    def where(self) -> str:
        """``topic[partition]``: the hold's scope and the records' field."""
        return f"{self.topic}[{self.partition}]"

    @property
    def key(self) -> str:
        """Names this discontinuity, the same when it is found again after a restart.

        A decision carries it, so a decision left over from an earlier discontinuity never
        resolves a new one. The log start is left out: retention moves it meanwhile.
        """
        text = "|".join(
            str(part)
            for part in (
                self.where,
                self.kind,
                self.stored.topic_id,
                self.stored.offset,
                self.observed.topic_id,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def ways_forward(self) -> tuple[Action, ...]:
        """What an operator may choose; re-reading cannot bring back removed records."""
        if self.kind is Kind.BELOW_LOG_START:
            return (Action.ACCEPT,)
        return (Action.REREAD, Action.ACCEPT)

    @property
    def reason(self) -> str:
        """One line for the hold, the log and the alert: what broke, both identities."""
        stored, seen = self.stored, self.observed
        was = f"offset {stored.offset} of topic id {stored.topic_id or 'unknown'}"
        if stored.high is not None:
            was += f" (high watermark seen {stored.high})"
        now = (
            "the topic is gone"
            if not seen.exists
            else f"topic id {seen.topic_id or 'unknown'}, log start "
            f"{_or_unknown(seen.log_start)}, high watermark {_or_unknown(seen.high)}"
        )
        what = {
            Kind.TOPIC_RECREATED: "the topic was deleted or recreated",
            Kind.LOG_TRUNCATED: "the log ends below what was read (recreated or truncated)",
            Kind.BELOW_LOG_START: "records never read were removed (retention or deletion)",
        }[self.kind]
        actions = " or ".join(f"cdc-cache continuity {a}" for a in self.ways_forward)
        return f"{self.where}: {what}: resumed at {was}; now {now}; see {actions}"


def _or_unknown(value: int | None) -> str:
    return "unknown" if value is None else str(value)
