"""Channel patterns: the linear matcher agrees with a regex, stays fast on adversarial input,
and the indexes find exactly what comparing every pattern with every channel finds."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.notify.patterns import (
    MAX_PATTERN_CHARS,
    MAX_STARS,
    ChannelNames,
    PatternError,
    PatternIndex,
    covers,
    matches,
    validate_pattern,
)


def reference(pattern: str, text: str) -> bool:
    """The backtracking regex the gateway used before: right, but exponential."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, text, re.DOTALL) is not None


patterns = st.text(alphabet="ab:*", max_size=10)
texts = st.text(alphabet="ab:", max_size=12)


@given(pattern=patterns, text=texts)
def test_the_linear_matcher_agrees_with_the_regex(pattern: str, text: str) -> None:
    assert matches(pattern, text) == reference(pattern, text)


@given(granted=patterns, requested=patterns, text=texts)
def test_a_covered_pattern_matches_nothing_its_cover_does_not(
    granted: str, requested: str, text: str
) -> None:
    if covers(granted, requested) and matches(requested, text):
        assert matches(granted, text)


def test_covers_reads_the_requested_stars_inside_granted_ones() -> None:
    assert covers("inventory:*", "inventory:no*")
    assert covers("*", "a*b*c")
    assert covers("a*", "a*")
    assert not covers("inventory:no*", "inventory:*")
    assert not covers("a*b", "a*")


ADVERSARIAL = [
    ("inventory:" + "*x" * MAX_STARS, "inventory:" + "x" * 10_000 + "Q"),
    ("inventory:" + "*x" * (MAX_STARS - 1) + "*Q", "inventory:" + "x" * 10_000),
    ("*" + "ab*" * (MAX_STARS - 1) + "c", "ab" * 5_000),
    ("*" + "a" * 200 + "*b", "a" * 10_000),
]


@pytest.mark.parametrize(("pattern", "channel"), ADVERSARIAL)
def test_adversarial_patterns_match_in_linear_time(pattern: str, channel: str) -> None:
    # A backtracking regex takes seconds at six stars and 70 characters, minutes at eight;
    # this is 16 stars against 10,000 characters, 100 times over.
    validate_pattern(pattern)
    started = time.perf_counter()
    for _ in range(100):
        matches(pattern, channel)
        covers(pattern, channel)
    assert time.perf_counter() - started < 2.0


def test_the_old_regex_was_exponential_on_the_same_input() -> None:
    pattern, channel = "inventory:" + "*x" * 5 + "*Q", "inventory:" + "x" * 60
    started = time.perf_counter()
    reference(pattern, channel)
    slow = time.perf_counter() - started
    started = time.perf_counter()
    assert not matches(pattern, channel)
    assert slow > 20 * (time.perf_counter() - started)


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("", "non-empty"),
        ("a" * (MAX_PATTERN_CHARS + 1), f"at most {MAX_PATTERN_CHARS} characters"),
        ("a:" + "*" * (MAX_STARS + 1), f"at most {MAX_STARS} are allowed"),
        ("a b", "whitespace"),
        ("a\x00", "control"),
        (7, "non-empty string"),
    ],
)
def test_unusable_patterns_are_refused_with_the_reason(pattern: object, error: str) -> None:
    with pytest.raises(PatternError, match=error):
        validate_pattern(pattern)


def test_the_longest_allowed_pattern_passes() -> None:
    pattern = "a" * (MAX_PATTERN_CHARS - MAX_STARS) + "*" * MAX_STARS
    assert validate_pattern(pattern) == pattern


owners = st.integers(0, 5)
held = st.lists(st.tuples(st.text(alphabet="ab:*", min_size=1, max_size=6), owners), max_size=20)


@given(held=held, dropped=st.lists(st.integers(0, 19), max_size=10), channel=texts)
def test_the_pattern_index_finds_what_comparing_every_pattern_finds(
    held: list[tuple[str, int]], dropped: list[int], channel: str
) -> None:
    index: PatternIndex[int] = PatternIndex()
    for pattern, owner in held:
        index.add(pattern, owner)
    kept = list(held)
    for i in dropped:
        if i < len(held):
            index.discard(*held[i])
            kept = [h for h in kept if h != held[i]]
    assert index.owners(channel) == {o for p, o in kept if matches(p, channel)}
    assert len(index) == len({p for p, _ in kept})


@given(names=st.lists(texts, max_size=20), gone=st.lists(texts, max_size=5), pattern=patterns)
def test_channel_names_yield_exactly_the_matching_names(
    names: list[str], gone: list[str], pattern: str
) -> None:
    known = ChannelNames()
    for name in names:
        known.add(name)
    for name in gone:
        known.remove(name)
    left = set(names) - set(gone)
    assert len(known) == len(left)
    assert list(known.matching(pattern)) == sorted(n for n in left if matches(pattern, n))
