"""Client tokens for the notification gateway, and the channel patterns they grant.

A token is a standard JSON Web Token signed with HS256 (RFC 7519), so a backend in any
language mints one with its JWT library: claims ``channels`` (the patterns granted) and
``exp`` (unix seconds), both required. Verification accepts HS256 only (never ``none``
nor another algorithm named in the token's header), checks the signature before reading
the claims, and refuses an expired token. The secret is the gateway's ``secret`` setting;
give it at least 32 bytes (HS256's key size).

Patterns are channel names where ``*`` stands for any run of characters (channel names
never contain ``*``: row values in them are escaped), matched in linear time and bounded
in size (:mod:`cdc_cache.notify.patterns`); a token grants at most :data:`MAX_PATTERNS`. A client
may subscribe to a pattern only when every channel it can match is granted, and receives
only granted channels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import jwt
from jwt.warnings import InsecureKeyLengthWarning

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


ALGORITHM: Final = "HS256"
CHANNELS_CLAIM: Final = "channels"


def issue(secret: bytes, patterns: Iterable[str], expires_at: int) -> str:
    """A JWT granting ``patterns`` until ``expires_at``."""
    try:
        granted = _granted(patterns)
    except PatternError as exc:
        raise TokenError(str(exc)) from exc
    if not granted or not secret:
        msg = "a token needs a secret and at least one channel pattern"
        raise TokenError(msg)
    claims = {CHANNELS_CLAIM: granted, "exp": int(expires_at)}
    with warnings.catch_warnings():  # a short secret is the operator's choice, said in docs
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: bytes, token: str, now: float) -> Grant:
    """The grant ``token`` carries; raises TokenError when forged, malformed or expired."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options={"require": [CHANNELS_CLAIM, "exp"], "verify_exp": False},
            )
    except jwt.InvalidSignatureError as exc:
        msg = "token signature does not match"
        raise TokenError(msg) from exc
    except jwt.InvalidTokenError as exc:
        msg = f"token is malformed: {exc}"
        raise TokenError(msg) from exc
    channels = claims[CHANNELS_CLAIM]
    try:
        if not isinstance(channels, list):
            msg = f"the {CHANNELS_CLAIM} claim must be a list of channel patterns"
            raise TypeError(msg)
        patterns = tuple(_granted(channels))
        expires_at = int(claims["exp"])
    except PatternError as exc:
        msg = f"token payload is malformed: {exc}"
        raise TokenError(msg) from exc
    except (TypeError, ValueError) as exc:
        msg = f"token payload is malformed: {exc}"
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
