"""Client tokens for the notification gateway, and the channel patterns they grant.

A token is ``base64url(payload).base64url(HMAC-SHA256(secret, payload))`` where the payload
is compact JSON ``{"c": [patterns], "exp": unix seconds}``. Verification recomputes the
MAC and compares it in constant time before reading anything from the payload.

Patterns are channel names where ``*`` stands for any run of characters (channel names
never contain ``*``: row values in them are escaped). A client may subscribe to a pattern
only when every channel it can match is granted, and receives only granted channels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import orjson

MAX_PATTERNS = 64


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
        """True when every channel ``pattern`` can match is granted.

        With ``*`` as the only wildcard, a requested pattern read literally matching a
        granted one means each of its ``*`` falls inside a granted ``*``, so whatever it
        matches, the granted pattern matches too.
        """
        return any(matches(granted, pattern) for granted in self.patterns)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def issue(secret: bytes, patterns: Iterable[str], expires_at: int) -> str:
    """A token granting ``patterns`` until ``expires_at``."""
    granted = [validate_pattern(p) for p in patterns]
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
        patterns = tuple(validate_pattern(p) for p in fields["c"])
        expires_at = int(fields["exp"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        msg = "token payload is malformed"
        raise TokenError(msg) from exc
    if expires_at <= now:
        msg = "token expired"
        raise TokenError(msg)
    return Grant(patterns, expires_at)


def validate_pattern(pattern: object) -> str:
    """``pattern`` if it is a usable channel pattern; raises TokenError otherwise."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > 256:
        msg = f"channel pattern {pattern!r} must be a non-empty string of at most 256 characters"
        raise TokenError(msg)
    if any(ch.isspace() or not ch.isprintable() for ch in pattern):
        msg = f"channel pattern {pattern!r} may not hold whitespace or control characters"
        raise TokenError(msg)
    return pattern


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def matches(pattern: str, channel: str) -> bool:
    """True when ``channel`` matches ``pattern`` (``*``: any run of characters)."""
    return _regex(pattern).fullmatch(channel) is not None
