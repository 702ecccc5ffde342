"""How the version of a cache key is encoded and stored (pure).

The version of a cache key is the source position of the last change applied to it, plus
a rank (a delete ranks below a set at one position, see ``encoding.version_of``). It
lives in a small Redis hash per cluster slot, a *version bucket* (``keys.version_key``),
under a field that is a 64-bit digest of the cache key (``keys.version_field``). The
value is the version's *horizon* (the Unix minute after which it may be forgotten)
followed by the version:

- **No TTL.** Buckets never carry a TTL, so the ``volatile-*`` eviction policies, which
  evict only keys with a TTL, never evict a version or a tombstone: evicting a cache entry
  costs a miss, never a stale write. Horizons are enforced by the sweeper
  (``version_store.VersionSweeper``) instead, field by field.
- **Digits only.** Lua compares strings with ``strcoll()``, under the collation Redis was
  started with; only digits compare the same way in every locale. Each number is written
  as its digit count then its digits, which sorts in numeric order and tells where it ends,
  so ``(epoch, major, minor, row, rank)`` concatenated sorts as the tuple does (13 digits
  for a typical binlog position instead of the previous release's 62 characters).
- **Digests as fields.** Two cache keys share a version only if their 64-bit digests are
  equal within one slot: with 10 million keys, ~610 per slot, the chance that any two
  collide anywhere is ~1e-10 (n²/2 pairs per slot, 16384 slots, 2⁻⁶⁴ each).

The previous release kept one string key per cache key (``keys.legacy_version_key``: a
fixed-width decimal position with ``.s``/``.d`` and a TTL); ``version_store`` moves those
into buckets at start, reading them with :func:`legacy_version`.
"""

from __future__ import annotations

from typing import Final

from cdc_cache.core.positions import PositionError, SourcePosition

HORIZON_DIGITS: Final = 8  # the horizon, in Unix minutes, at the front of a stored version
SET_RANK: Final = "1"
DELETE_RANK: Final = "0"


def encode_number(n: int) -> str:
    """``n`` as digit count then digits; the strings sort as the numbers do.

    Counts 0..8 take one digit, 9..99 take ``9`` and two digits, so no encoding is a prefix
    of another and concatenated encodings still sort field by field.
    """
    if n < 0:
        msg = f"cannot encode a negative number ({n}) in a version"
        raise ValueError(msg)
    digits = str(n) if n else ""
    return _count(len(digits)) + digits


def _count(digits: int) -> str:
    """How many digits follow: one digit up to 8, else ``9`` and two digits."""
    return str(digits) if digits <= 8 else f"9{digits - 9:02d}"


# Every count a position's part can have (at most 20 digits), looked up on the hot path.
_COUNTS: Final = tuple(_count(digits) for digits in range(100))


def encode_version(position: SourcePosition, *, delete: bool) -> str:
    """The stored version of a change at ``position``: a delete ranks below a set.

    :func:`encode_number` of each part, inlined: the writer encodes one per key op.
    """
    epoch, major, minor, row = position.epoch, position.major, position.minor, position.row
    if epoch < 0 or major < 0 or minor < 0 or row < 0:
        for n in (epoch, major, minor, row):
            encode_number(n)  # raises for the negative one
    e = str(epoch) if epoch else ""
    j = str(major) if major else ""
    m = str(minor) if minor else ""
    r = str(row) if row else ""
    counts = _COUNTS
    return (
        counts[len(e)]
        + e
        + counts[len(j)]
        + j
        + counts[len(m)]
        + m
        + counts[len(r)]
        + r
        + (DELETE_RANK if delete else SET_RANK)
    )


def epoch_of(version: str) -> int:
    """The epoch a version starts with (its first encoded number)."""
    count_digit = version[:1]
    if not count_digit.isdigit():
        msg = f"not a version: {version!r}"
        raise ValueError(msg)
    count, start = int(count_digit), 1
    if count == 9:  # nine marks a two-digit count (see encode_number)
        count, start = int(version[1:3]) + 9, 3
    digits = version[start : start + count]
    if len(digits) != count:
        msg = f"not a version: {version!r}"
        raise ValueError(msg)
    return int(digits) if digits else 0


def is_delete(version: str) -> bool:
    """True for a tombstone: the last change applied to the key deleted it."""
    return version.endswith(DELETE_RANK)


def stored(version: str, horizon_minute: int) -> str:
    """What a bucket field holds: the horizon (Unix minutes), then the version."""
    return f"{horizon_minute:0{HORIZON_DIGITS}d}{version}"


def parse_stored(value: str | bytes) -> tuple[int, str]:
    """The horizon (Unix minutes) and the version of a bucket field's value."""
    text = value.decode() if isinstance(value, bytes) else value
    head, version = text[:HORIZON_DIGITS], text[HORIZON_DIGITS:]
    if len(head) != HORIZON_DIGITS or not head.isdigit() or not version.isdigit():
        msg = f"not a stored version: {text!r}"
        raise ValueError(msg)
    return int(head), version


def legacy_version(value: str | bytes) -> str:
    """The version a previous release's version key holds, in today's encoding.

    Raises ValueError for anything else.
    """
    text = value.decode() if isinstance(value, bytes) else value
    body, _, rank = text.rpartition(".")
    if rank not in ("s", "d"):
        msg = f"not a version of the previous release: {text!r}"
        raise ValueError(msg)
    try:
        position = SourcePosition.decode(body)
    except PositionError as exc:
        raise ValueError(str(exc)) from exc
    return encode_version(position, delete=rank == "d")
