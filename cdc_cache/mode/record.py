"""The mode keys in Redis, read strictly: whatever else they hold is named, never guessed.

``cdc:mode:flag`` (set by operators) and ``cdc:mode`` (written by the worker, read by
applications) can be overwritten by anyone with access to Redis. A wrong type, an unknown
mode or a time that is not a number raises :class:`ModeKeyError` naming the key, what it
holds and how to fix it, so it is reported as what it is, never as Redis being
unavailable (Redis answered).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

import orjson
from redis import exceptions as rex

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.keys import ns
from cdc_cache.mode.controller import Cause, Flag, Mode

_E = TypeVar("_E", bound=StrEnum)


def rewrite() -> str:
    """How to repair the mode hash: the worker writes it again."""
    return f"delete it (DEL {ns().mode}): the worker writes it again within a second"


class ModeKeyError(ConfigError):
    """A mode key holds something cdc-cache cannot read (a wrong type or a junk value)."""


@contextmanager
def reading(key: str, fix: str) -> Iterator[None]:
    """Turn a WRONGTYPE reply or undecodable bytes about ``key`` into ModeKeyError."""
    try:
        yield
    except rex.ResponseError as exc:
        if not str(exc).startswith("WRONGTYPE"):
            raise
        msg = f"{key} holds another type of value than cdc-cache writes there; {fix}"
        raise ModeKeyError(msg) from None
    except UnicodeDecodeError:
        msg = f"{key} holds bytes that are not UTF-8 text; {fix}"
        raise ModeKeyError(msg) from None


def parse_flag(value: str | bytes | None, where: str | None = None) -> Flag:
    """The flag stored in Redis; absent means ``auto``; anything else is refused."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    if text is None:
        return Flag.AUTO
    try:
        return Flag(text.strip().lower())
    except ValueError:
        where = where or ns().mode_flag
        msg = f"{where} holds {text!r}; set it to auto, cdc or ttl (cdc-cache mode set)"
        raise ModeKeyError(msg) from None


@dataclass(frozen=True, slots=True)
class ModeRecord:
    """The effective mode as the leader published it in ``cdc:mode``.

    ``tables`` are the tables in ``ttl`` mode on their own, with the reason of each.
    """

    mode: Mode
    flag: Flag
    cause: Cause
    reason: str
    since_ms: int
    lag_s: str
    tables: dict[str, str] = field(default_factory=dict)
    writer: str = "worker"  # or "watchdog", standing in for a worker that is down

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> ModeRecord | None:
        """From the hash as text; None when empty (no worker has published yet)."""
        if not fields:
            return None
        since = fields.get("since_ms", "0")
        if not since.isascii() or not since.isdigit():
            msg = f"{ns().mode} field since_ms holds {since!r}, not a time in ms; {rewrite()}"
            raise ModeKeyError(msg)
        return cls(
            mode=_member(Mode, fields, "mode", Mode.CDC.value),
            flag=parse_flag(fields.get("flag"), f"{ns().mode} field flag"),
            cause=_member(Cause, fields, "cause", Cause.START.value),
            reason=fields.get("reason", ""),
            since_ms=int(since),
            lag_s=fields.get("lag_s", ""),
            tables=_tables(fields.get("tables")),
            writer=fields.get("writer", "worker"),
        )


def _tables(text: str | None) -> dict[str, str]:
    """The ``tables`` field: a JSON object of table and reason (absent: none)."""
    try:
        tables = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        tables = None
    if not isinstance(tables, dict) or not all(isinstance(v, str) for v in tables.values()):
        msg = f"{ns().mode} field tables holds {text!r}, not a JSON object of reasons; {rewrite()}"
        raise ModeKeyError(msg)
    return tables


def _member(kind: type[_E], fields: Mapping[str, str], name: str, default: str) -> _E:
    value = fields.get(name, default)
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        msg = f"{ns().mode} field {name} holds {value!r}, not one of {known}; {rewrite()}"
        raise ModeKeyError(msg) from None
