"""What Redis holds for one cache key now: its value, its TTL and its version.

Read-only, for operators' tools (``cdc-cache trace``): the apply script is the only writer.
The reads are separate commands, not one snapshot, so a change applied between them can
show a value of one change and the version of the next; the tools say when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdc_cache.sink.connection import Client
from cdc_cache.sink.version_store import stored_version


@dataclass(frozen=True, slots=True)
class KeyState:
    """One cache key as Redis holds it.

    ``kind`` is Redis' type (``none`` when the key is absent); ``value`` the string's text
    (or its bytes as Latin-1 when not UTF-8) or the hash's fields; ``ttl_ms`` the remaining
    TTL (None: absent, -1: none); ``version`` the version stored for the key in its slot's
    version hash (None: none), as :mod:`cdc_cache.sink.versions` encodes it.
    """

    key: str
    kind: str
    value: str | dict[str, str] | None
    ttl_ms: int | None
    version: str | None

    @property
    def exists(self) -> bool:
        """True when the key holds a value."""
        return self.kind != "none"


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_key_state(client: Client, key: str) -> KeyState:
    """The value, TTL and version of ``key``."""
    kind = _text(client.type(key))  # type: ignore[no-untyped-call]
    value: str | dict[str, str] | None = None
    if kind == "string":
        raw: Any = client.get(key)
        value = _text(raw) if raw is not None else None
    elif kind == "hash":
        fields: Any = client.hgetall(key)
        value = {_text(f): _text(v) for f, v in fields.items()}
    ttl: Any = client.pttl(key)
    return KeyState(
        key=key,
        kind=kind,
        value=value,
        ttl_ms=None if ttl == -2 else int(ttl),
        version=stored_version(client, key),
    )
