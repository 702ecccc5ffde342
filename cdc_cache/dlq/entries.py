"""Dead-letter entries: one JSON envelope for every message the worker had to set aside.

Pure: a poison error and what is known about its message in, a JSON-ready dict out; plus
the entry id, redaction of sensitive columns, and turning a stored entry back into the
record it came from. Which entries an operator asks for is :mod:`cdc_cache.dlq.filters`;
Kafka and Redis stay in :mod:`cdc_cache.dlq.topic` and :mod:`cdc_cache.app.replay`.

The id is a digest of the source topic, partition, offset and the failure kind, so a
failure delivered again after a crash (the worker replays from its last snapshot) gets
the same id and consumers count distinct ids.

An entry can always be written, whatever the message holds: JSON nested deeper than
:data:`MAX_ENTRY_DEPTH` is stored as text (or withheld), long texts are truncated, text
the encoder refuses is escaped, and anything still unwritable is withheld; the entry's
``withheld`` field says what was left out and why.

Kept in one module: the envelope, its id and the limits that keep it writable are one
pure contract, read back by replay and the DLQ page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from cdc_cache.core.errors import PoisonMessage
from cdc_cache.core.events import ChangeEvent, SourceRecord
from cdc_cache.core.nesting import ENCODER_MAX_DEPTH, nesting_depth
from cdc_cache.core.scrub import REDACTED, scrub, spellings
from cdc_cache.plan.invalidations import Invalidated

__all__ = ["REDACTED"]  # the mask, shared with free-text scrubbing

# A stored key or value above this is left out: replay reads the message from its source
# topic, and the envelope stays far below the broker's message size limit.
MAX_PART_BYTES: Final = 64 * 1024
MAX_STACK_CHARS: Final = 16 * 1024
MAX_REASON_CHARS: Final = 4 * 1024
# Stored JSON nests at most this deep: the entry adds its own levels around it, and the
# encoder writes ENCODER_MAX_DEPTH at most (redaction walks it recursively, too).
MAX_ENTRY_DEPTH: Final = ENCODER_MAX_DEPTH // 2
ID_LENGTH: Final = 32
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def entry_id(topic: str, partition: int, offset: int, kind: str) -> str:
    """The deterministic id of the failure ``kind`` of the message at these coordinates."""
    digest = hashlib.sha256(f"{topic}\x1f{partition}\x1f{offset}\x1f{kind}".encode())
    return digest.hexdigest()[:ID_LENGTH]


def iso_utc(ms: float) -> str:
    """Milliseconds since the epoch as ``2026-01-31T12:00:00.123Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso_ms(text: str) -> int:
    """Inverse of :func:`iso_utc`; also accepts any ISO 8601 time with a zone (or UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def redact(doc: Any, sensitive: frozenset[str]) -> tuple[Any, frozenset[str]]:
    """``doc`` with the value of every mapping key named in ``sensitive`` replaced.

    Applied at any depth, so a column is hidden in ``before``, ``after``, a flattened row
    and the message key alike; returns the columns actually found.
    """
    if not sensitive:
        return doc, frozenset()
    found: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for name, value in node.items():
                if name in sensitive and value is not None:
                    found.add(name)
                    out[name] = REDACTED
                else:
                    out[name] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(doc), frozenset(found)


def _part(raw: bytes | None, sensitive: frozenset[str]) -> tuple[dict[str, Any] | None, set[str]]:
    """One stored message part: ``{"encoding": json|text|base64|withheld|omitted, ...}``."""
    if raw is None:
        return None, set()
    if len(raw) > MAX_PART_BYTES:
        return {"encoding": "omitted", "size": len(raw), "data": None}, set()
    note = {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    else:
        if nesting_depth(doc, MAX_ENTRY_DEPTH) <= MAX_ENTRY_DEPTH:
            clean, found = redact(doc, sensitive)
            return {"encoding": "json", "size": len(raw), "data": clean}, set(found)
        note = {"note": f"JSON nested more than {MAX_ENTRY_DEPTH} levels deep"}
    if sensitive:  # cannot tell where the sensitive columns are: show nothing
        return {"encoding": "withheld", "size": len(raw), "data": None, **note}, set()
    try:
        return {"encoding": "text", "size": len(raw), "data": raw.decode(), **note}, set()
    except UnicodeDecodeError:
        return {
            "encoding": "base64",
            "size": len(raw),
            "data": base64.b64encode(raw).decode(),
        }, set()


def stored_message(record: SourceRecord, sensitive: frozenset[str]) -> dict[str, Any]:
    """The raw key and value as an entry stores them, sensitive columns redacted."""
    key, key_found = _part(record.key, sensitive)
    value, value_found = _part(record.value, sensitive)
    return {
        "key": key,
        "value": value,
        "timestamp_ms": record.timestamp_ms,
        "redacted": sorted(key_found | value_found),
    }


def _raw(part: Mapping[str, Any] | None) -> bytes | None:
    if part is None:
        return None
    encoding, data = part.get("encoding"), part.get("data")
    if encoding == "json":
        return orjson.dumps(data)
    if encoding == "text" and isinstance(data, str):
        return data.encode()
    if encoding == "base64" and isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            msg = f"stored message part is not valid base64: {exc}"
            raise ValueError(msg) from exc
    msg = f"the entry does not hold this message part ({encoding}); read it from the source"
    raise ValueError(msg)


def malformed(entry: object) -> str | None:
    """What keeps ``entry`` (a DLQ topic's message, decoded) from being listed or replayed.

    None for an entry of the shape :func:`envelope` writes, as far as listing and replay
    read it: a text id, a kind, and source coordinates. Anything may be on the topic (a
    producer other than the worker, an older format), and one such message must not stop
    a listing or ``dlq replay --all`` halfway.
    """
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    for name in ("id", "kind"):
        if not isinstance(entry.get(name), str):
            return f"its {name} is {entry.get(name)!r}, not a text"
    source = entry.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("topic"), str):
        return f"its source {source!r} names no topic"
    for name in ("partition", "offset"):
        value = source.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"its source {name} is {value!r}, not a partition or offset"
    if not isinstance(entry.get("message"), dict | None):
        return "its message copy is not an object"
    return None


def record_of(entry: Mapping[str, Any]) -> SourceRecord:
    """The source coordinates of ``entry`` with its stored key and value.

    Raises ValueError when the stored copy is incomplete (redacted, withheld, omitted),
    so a replay never feeds a redacted image to the cache.
    """
    source = entry["source"]
    message = entry.get("message")
    if message is None:
        msg = "the entry holds no copy of the message"
        raise ValueError(msg)
    if message.get("redacted"):
        msg = f"the entry's copy has redacted columns ({', '.join(message['redacted'])})"
        raise ValueError(msg)
    return SourceRecord(
        str(source["topic"]),
        int(source["partition"]),
        int(source["offset"]),
        _raw(message.get("key")),
        _raw(message.get("value")),
        message.get("timestamp_ms"),
    )


def _key_columns(raw: bytes | None) -> Any:
    """Best effort primary key of an undecoded message: its JSON key, schema stripped."""
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("payload"), dict) and "schema" in doc:
        return doc["payload"]
    return doc if isinstance(doc, dict) else None


def stack_of(error: BaseException, hidden: tuple[str, ...] = ()) -> str:
    """The error's traceback with its causes, capped (the head and the raising frame).

    ``hidden`` (sensitive values' spellings) is scrubbed before the cap, so no cut can
    leave part of one behind.
    """
    return _capped(scrub("".join(traceback.format_exception(error)), hidden), MAX_STACK_CHARS)


def _capped(text: str, limit: int) -> str:
    """``text`` writable and at most about ``limit`` characters: its head and its tail.

    Lone surrogates (which UTF-8 cannot carry) become backslash escapes.
    """
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    half = limit // 2
    left_out = len(text) - 2 * half
    return f"{text[:half]}\n... ({left_out} characters left out) ...\n{text[-half:]}"


@dataclass(frozen=True, slots=True)
class Failure:
    """One rejected message: the poison error (with its record) and its table.

    ``event`` is the decoded change when decoding got that far; ``invalidation`` what
    became of its keys (see :mod:`cdc_cache.plan.invalidations`) when it had any.
    """

    error: PoisonMessage
    table: str
    event: ChangeEvent | None = None
    invalidation: Invalidated | None = None

    @property
    def record(self) -> SourceRecord:
        """The offending message (every rejection carries one)."""
        assert self.error.record is not None
        return self.error.record


def envelope(failure: Failure, sensitive: frozenset[str], failed_at_ms: float) -> dict[str, Any]:
    """The DLQ entry of ``failure`` (see the README's "Dead letters" for each field).

    Poison is never retried automatically (a retry cannot fix it): ``attempt`` and
    ``max_attempts`` are 1 and ``next_retry_at``/``backoff_ms`` are null; operators
    replay entries once the cause is fixed, and each replay's outcome is kept per id.
    """
    error, record, event = failure.error, failure.record, failure.event
    hidden = spellings(sensitive, event, record)
    withheld: list[str] = []
    primary_key = event.key if event is not None else _key_columns(record.key)
    if nesting_depth(primary_key, MAX_ENTRY_DEPTH) > MAX_ENTRY_DEPTH:
        primary_key = None
        withheld.append(f"primary_key: nested more than {MAX_ENTRY_DEPTH} levels deep")
    reason = scrub(error.reason, hidden)
    if len(reason) > MAX_REASON_CHARS:
        withheld.append(f"reason: {len(reason)} characters, truncated")
    entry = {
        "id": entry_id(record.topic, record.partition, record.offset, error.kind),
        "kind": error.kind,
        "failed_at": iso_utc(failed_at_ms),
        "attempt": 1,
        "max_attempts": 1,
        "reason": _capped(reason, MAX_REASON_CHARS),
        "error_class": type(error).__name__,
        "stack": stack_of(error, hidden),
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
        "position": str(event.position) if event is not None else None,
        "table": failure.table,
        "primary_key": redact(primary_key, sensitive)[0],
        "message": stored_message(record, sensitive),
        "next_retry_at": None,
        "backoff_ms": None,
        "invalidation": _invalidation(failure),
        "withheld": withheld,
    }
    return writable(entry)


def public_reason(failure: Failure, sensitive: frozenset[str]) -> str:
    """The failure's reason as a replay outcome shows it: as in its entry, scrubbed, capped."""
    hidden = spellings(sensitive, failure.event, failure.record)
    return _capped(scrub(failure.error.reason, hidden), MAX_REASON_CHARS)


def writable(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` as the encoder will take it: a field it refuses is withheld, and noted.

    The last guard of the dead-letter path, whatever a message or an error holds.
    """
    try:
        orjson.dumps(entry)
    except TypeError:  # orjson.JSONEncodeError: too deep, not UTF-8, not JSON-typed
        out: dict[str, Any] = {}
        withheld = list(entry.get("withheld") or [])
        for name, value in entry.items():
            try:
                orjson.dumps(value)
            except TypeError as exc:
                out[name] = None
                withheld.append(f"{name}: cannot be written as JSON ({exc})")
            else:
                out[name] = value
        out["withheld"] = withheld
        return out
    return entry


def fallback_entry(failure: Failure, problem: BaseException, failed_at_ms: float) -> dict[str, Any]:
    """The entry of ``failure`` when :func:`envelope` itself failed: coordinates and kind.

    Holds nothing taken from the message or its error (either may be what failed), so
    it is always written; replay reads the message from its source topic.
    """
    record, kind = failure.record, failure.error.kind
    return {
        "id": entry_id(record.topic, record.partition, record.offset, kind),
        "kind": kind,
        "failed_at": iso_utc(failed_at_ms),
        "attempt": 1,
        "max_attempts": 1,
        "reason": f"{kind} (the entry could not be built: {type(problem).__name__})",
        "error_class": type(failure.error).__name__,
        "stack": None,
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
        "position": None,
        "table": failure.table,
        "primary_key": None,
        "message": None,
        "next_retry_at": None,
        "backoff_ms": None,
        "invalidation": _invalidation(failure),
        "withheld": [
            f"all but the coordinates: building the entry raised {type(problem).__name__}"
        ],
    }


# What an entry too large for the DLQ topic keeps: its coordinates and why, first with its
# reason, table and what became of its keys, then without them (the message's own text).
_COMPACT: Final = ("id", "kind", "failed_at", "attempt", "max_attempts", "reason",
                   "error_class", "source", "position", "table", "next_retry_at",
                   "backoff_ms", "invalidation")  # fmt: skip
_COORDINATES: Final = ("id", "kind", "failed_at", "attempt", "max_attempts", "error_class",
                       "source", "next_retry_at", "backoff_ms")  # fmt: skip


def shrunk(entry: Mapping[str, Any], problem: str) -> dict[str, Any] | None:
    """A smaller form of ``entry``, which the DLQ topic refused for its size (``problem``).

    First without the copy of the message, its primary key and the stack; then with its
    coordinates and kind alone (replay reads the message from its source topic). The
    fields left out are null, and ``withheld`` says why. None when it is that already:
    nothing smaller says which message failed.
    """
    for kept in (_COMPACT, _COORDINATES):
        left_out = [
            name
            for name, value in entry.items()
            if name not in kept and name != "withheld" and value is not None
        ]
        if left_out:
            out = {name: None if name in left_out else value for name, value in entry.items()}
            note = f"{', '.join(left_out)}: the entry was too large for the DLQ topic ({problem})"
            return {**out, "withheld": [*(entry.get("withheld") or []), note]}
    return None


def _invalidation(failure: Failure) -> dict[str, Any] | None:
    """What became of the failure's keys: counts and rule templates, never row values."""
    return failure.invalidation.entry() if failure.invalidation else None
