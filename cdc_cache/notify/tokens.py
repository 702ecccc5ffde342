"""Client tokens for the notification gateway, and the channel patterns they grant.

A token is ``base64url(payload).base64url(HMAC-SHA256(secret, payload))`` where the payload
is compact JSON ``{"c": [patterns], "exp": unix seconds}``. Verification recomputes the
MAC and compares it in constant time before reading anything from the payload.

Patterns are channel names where ``*`` stands for any run of characters (channel names
never contain ``*``: row values in them are escaped), matched in linear time and bounded
in size (:mod:`cdc_cache.notify.patterns`); a token grants at most :data:`MAX_PATTERNS`. A client
may subscribe to a pattern only when every channel it can match is granted, and receives
only granted channels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import orjson

from cdc_cache.notify.patterns import PatternError, covers, matches, validate_pattern

MAX_PATTERNS: Final = 64  # per token, and the default per gateway connection


class TokenError(ValueError):
    """A token that is malformed, forged or expired; the message says which."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: channel patterns, until ``expires_at`` (unix seconds)."""

    patterns: tuple[str, ...]
    expires_at: int

    def allows_channel(self, channel: str) -> bool:
        """True when ``channel`` matches one of the granted patterns."""
        return any(matches(pattern, channel) for pattern in self.patterns)

    def allows_pattern(self, pattern: str) -> bool:
        """True when every channel ``pattern`` can match is granted (see ``covers``)."""
        return any(covers(granted, pattern) for granted in self.patterns)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def issue(secret: bytes, patterns: Iterable[str], expires_at: int) -> str:
    """A token granting ``patterns`` until ``expires_at``."""
    try:
        granted = _granted(patterns)
    except PatternError as exc:
        raise TokenError(str(exc)) from exc
    if not granted or not secret:
        msg = "a token needs a secret and at least one channel pattern"
        raise TokenError(msg)
    payload = orjson.dumps({"c": granted, "exp": int(expires_at)})
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, token: str, now: float) -> Grant:
    """The grant ``token`` carries; raises TokenError when forged, malformed or expired."""
    body, dot, signature = token.partition(".")
    try:
        payload, mac = _unb64(body), _unb64(signature)
    except (binascii.Error, ValueError) as exc:
        msg = "token is not base64url"
        raise TokenError(msg) from exc
    if not dot or not hmac.compare_digest(mac, _mac(secret, payload)):
        msg = "token signature does not match"
        raise TokenError(msg)
    try:
        fields = orjson.loads(payload)
        patterns = tuple(_granted(fields["c"]))
        expires_at = int(fields["exp"])
    except PatternError as exc:
        msg = f"token payload is malformed: {exc}"
        raise TokenError(msg) from exc
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        msg = "token payload is malformed"
        raise TokenError(msg) from exc
    if expires_at <= now:
        msg = "token expired"
        raise TokenError(msg)
    return Grant(patterns, expires_at)


def _granted(patterns: Iterable[object]) -> list[str]:
    """The patterns a token may grant: each valid, at most :data:`MAX_PATTERNS` of them."""
    granted = [validate_pattern(p) for p in patterns]
    if len(granted) > MAX_PATTERNS:
        msg = f"a token grants {len(granted)} channel patterns; at most {MAX_PATTERNS} are allowed"
        raise PatternError(msg)
    return granted
