"""Channel patterns: ``*`` globs matched in linear time, bounded in size, and indexed.

A pattern is a channel name in which ``*`` stands for any run of characters. Channel names
come from row values (escaped, so they never hold ``*``), and patterns come from clients,
so neither side may make matching expensive: :func:`matches` finds the literal pieces
between the stars left to right, each at its first place (a greedy segment match, no
backtracking), which costs about the length of the channel times the pieces' length
instead of the exponential time a backtracking regex takes on ``a*x*x*x*x*x*x*Q``.
Patterns are bounded (:data:`MAX_PATTERN_CHARS`, :data:`MAX_STARS`) wherever they enter:
in tokens and in subscribe requests.

:class:`PatternIndex` and :class:`ChannelNames` keep the gateway's cost of a new channel,
or of a new subscription, independent of the patterns and channels that cannot match it.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from typing import Final, Generic, TypeVar

MAX_PATTERN_CHARS: Final = 256
MAX_STARS: Final = 16

T = TypeVar("T")


class PatternError(ValueError):
    """A pattern that is not a usable channel pattern; the message says why."""


def validate_pattern(pattern: object) -> str:
    """``pattern`` if it is a usable channel pattern; raises PatternError otherwise."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_CHARS:
        shown = pattern[:40] + "..." if isinstance(pattern, str) and len(pattern) > 40 else pattern
        msg = (
            f"channel pattern {shown!r} must be a non-empty string of at most "
            f"{MAX_PATTERN_CHARS} characters"
        )
        raise PatternError(msg)
    if any(ch.isspace() or not ch.isprintable() for ch in pattern):
        msg = f"channel pattern {pattern!r} may not hold whitespace or control characters"
        raise PatternError(msg)
    stars = pattern.count("*")
    if stars > MAX_STARS:
        msg = f"channel pattern {pattern!r} has {stars} '*'; at most {MAX_STARS} are allowed"
        raise PatternError(msg)
    return pattern


@lru_cache(maxsize=4096)
def _pieces(pattern: str) -> tuple[str, ...]:
    """The literal pieces around the stars (one more than there are stars)."""
    return tuple(pattern.split("*"))


def matches(pattern: str, text: str) -> bool:
    """True when ``text`` matches ``pattern`` (``*``: any run of characters, even none).

    The first piece must start ``text`` and the last must end it; each piece in between
    is taken at its first occurrence after the previous one. Taking the first is never
    wrong: a later occurrence leaves less room for the pieces after it, never more.
    """
    pieces = _pieces(pattern)
    if len(pieces) == 1:
        return text == pattern
    head, tail = pieces[0], pieces[-1]
    end = len(text) - len(tail)
    if end < len(head) or not text.startswith(head) or not text.endswith(tail):
        return False
    at = len(head)
    for piece in pieces[1:-1]:
        if piece:
            found = text.find(piece, at, end)
            if found < 0:
                return False
            at = found + len(piece)
    return True


def covers(granted: str, requested: str) -> bool:
    """True when every channel ``requested`` can match is matched by ``granted`` too.

    ``requested`` is read literally: if ``granted`` matches it that way, each ``*`` of
    ``requested`` falls inside the run one of ``granted``'s stars takes (its literal
    pieces hold no ``*``), and that star takes whatever the requested star stands for.
    Sound, and as cheap as :func:`matches`; a cover it cannot see is refused, never
    granted.
    """
    return matches(granted, requested)


def literal_ends(pattern: str) -> tuple[str, str]:
    """What every match of ``pattern`` starts and ends with.

    The pieces before its first ``*`` and after its last (both the whole name when it has
    no ``*``).
    """
    pieces = _pieces(pattern)
    return pieces[0], pieces[-1]


class PatternIndex(Generic[T]):
    """Which owners hold which patterns, looked up by channel.

    Patterns are grouped by their literal ends (the text before the first ``*`` and after
    the last): a channel is compared only with patterns whose ends it starts and ends
    with, and with each distinct pattern once however many owners hold it. Exact names
    cost one dict lookup, and patterns that cannot match cost nothing but one lookup per
    distinct pair of end lengths.
    """

    def __init__(self) -> None:
        self._owners: dict[str, set[T]] = {}
        self._groups: dict[tuple[str, str], set[str]] = {}
        self._shapes: Counter[tuple[int, int]] = Counter()

    def __len__(self) -> int:
        """Distinct patterns held."""
        return len(self._owners)

    def add(self, pattern: str, owner: T) -> None:
        """``owner`` holds ``pattern`` (again: no change)."""
        owners = self._owners.get(pattern)
        if owners is None:
            owners = self._owners[pattern] = set()
            if "*" in pattern:
                head, tail = literal_ends(pattern)
                self._groups.setdefault((head, tail), set()).add(pattern)
                self._shapes[(len(head), len(tail))] += 1
        owners.add(owner)

    def discard(self, pattern: str, owner: T) -> None:
        """``owner`` no longer holds ``pattern`` (nothing happens if it did not)."""
        owners = self._owners.get(pattern)
        if owners is None:
            return
        owners.discard(owner)
        if owners:
            return
        del self._owners[pattern]
        if "*" in pattern:
            ends = literal_ends(pattern)
            group = self._groups[ends]
            group.discard(pattern)
            if not group:
                del self._groups[ends]
            shape = (len(ends[0]), len(ends[1]))
            self._shapes[shape] -= 1
            if not self._shapes[shape]:
                del self._shapes[shape]

    def owners(self, channel: str) -> set[T]:
        """Every owner of a pattern that matches ``channel``."""
        found: set[T] = set()
        if "*" not in channel:  # exact patterns: a name with a '*' is a glob, looked up below
            found.update(self._owners.get(channel, ()))
        size = len(channel)
        for head, tail in self._shapes:
            if head + tail <= size:
                for pattern in self._groups.get((channel[:head], channel[size - tail :]), ()):
                    if matches(pattern, channel):
                        found.update(self._owners[pattern])
        return found


class ChannelNames:
    """Known channel names, sorted as they are and by their reversal.

    A pattern then visits only the names that start with its head or (when fewer) end
    with its tail.
    """

    def __init__(self) -> None:
        self._names: list[str] = []
        self._reversed: list[str] = []

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        at = bisect.bisect_left(self._names, name)
        return at < len(self._names) and self._names[at] == name

    def add(self, name: str) -> None:
        """Remember ``name`` (again: no change)."""
        if name not in self:
            bisect.insort(self._names, name)
            bisect.insort(self._reversed, name[::-1])

    def remove(self, name: str) -> None:
        """Forget ``name`` (nothing happens if it is unknown)."""
        if name in self:
            self._names.remove(name)
            self._reversed.remove(name[::-1])

    def matching(self, pattern: str) -> Iterator[str]:
        """The known names ``pattern`` matches, in sorted order."""
        head, tail = literal_ends(pattern)
        starting = _prefixed(self._names, head)
        ending = _prefixed(self._reversed, tail[::-1])
        if len(ending) < len(starting):
            candidates = sorted(self._reversed[i][::-1] for i in ending)
        else:
            candidates = [self._names[i] for i in starting]
        return (name for name in candidates if matches(pattern, name))


def _prefixed(ordered: list[str], prefix: str) -> range:
    """The indices of the items of sorted ``ordered`` that start with ``prefix``."""
    start = bisect.bisect_left(ordered, prefix)
    end = bisect.bisect_right(ordered, prefix, lo=start, key=lambda item: item[: len(prefix)])
    return range(start, end)
