from __future__ import annotations

import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cdc_cache.core.keys import (
    MAX_VALUE_CHARS,
    SLOTS,
    all_version_buckets,
    escape_value,
    key_slot,
    lease_key,
    leased_key,
    legacy_cache_key,
    legacy_version_key,
    version_key,
)

FORBIDDEN = frozenset(":{}*?[]")


def assert_key_safe(text: str) -> None:
    for ch in text:
        assert ch not in FORBIDDEN, text
        assert not ch.isspace(), text
        assert unicodedata.category(ch)[0] != "C", text


@given(st.text(), st.text())
def test_escape_value_is_injective_on_strings(a: str, b: str) -> None:
    assume(a != b)
    assert escape_value(a) != escape_value(b)


@given(st.text(max_size=30).map(lambda s: s + "x"))
def test_escape_value_is_injective_on_prefix_extensions(a: str) -> None:
    assert escape_value(a) != escape_value(a[:-1])


@given(st.one_of(st.text(), st.binary(), st.integers(), st.floats(), st.booleans(), st.none()))
def test_escape_value_emits_no_key_syntax(value: object) -> None:
    assert_key_safe(escape_value(value))


@pytest.mark.parametrize(
    "value", [":", "{", "}", "*", "?", "[", "]", " ", "\t", "\n", "\x00", "\x7f", "\u2028", "~"]
)
def test_escape_value_escapes_each_dangerous_char(value: str) -> None:
    escaped = escape_value(f"a{value}b")
    assert_key_safe(escaped)
    assert escaped != "ab"


@given(st.text(min_size=MAX_VALUE_CHARS, max_size=5_000))
def test_long_values_are_bounded_and_still_distinct(value: str) -> None:
    escaped = escape_value(value)
    assert len(escaped) <= MAX_VALUE_CHARS
    assert escaped != escape_value(value + "!")


def test_none_differs_from_every_string() -> None:
    assert escape_value(None) not in {escape_value(s) for s in ["", "~", "None", "null"]}


BRACE_PARTS = st.sampled_from(["{", "}", "{}", "}{", "{{", "}}", "{a}", "{{a}}", "{a{b}c}", ":"])
AWKWARD_KEYS = st.one_of(
    st.lists(st.one_of(BRACE_PARTS, st.text(max_size=8)), max_size=12).map("".join),
    st.text(),
    st.text(min_size=1_000, max_size=20_000),
    st.sampled_from(["", "{}", "{}{a}", "{{}}", "a{}b{c}", "{", "}", "stock:{7}:north", "é{ü}"]),
)


@given(AWKWARD_KEYS)
def test_version_key_shares_the_slot_of_its_key(key: str) -> None:
    assert key_slot(version_key(key)) == key_slot(key)


@given(AWKWARD_KEYS)
def test_version_buckets_are_few_and_every_one_is_known(key: str) -> None:
    # the sweeper visits every bucket by name, without scanning the keyspace
    assert version_key(key) in _BUCKETS
    assert key_slot(version_key(key, buckets=4)) == key_slot(key)


_BUCKETS = frozenset(all_version_buckets())


def test_one_bucket_per_slot() -> None:
    assert len(_BUCKETS) == SLOTS
    assert {key_slot(b) for b in _BUCKETS} == set(range(SLOTS))


@given(AWKWARD_KEYS)
def test_legacy_version_key_leads_back_to_its_key(key: str) -> None:
    assert key_slot(legacy_version_key(key)) == key_slot(key)
    assert legacy_cache_key(legacy_version_key(key)) == key
    assert legacy_cache_key(lease_key(key)) is None


@given(AWKWARD_KEYS)
def test_lease_key_shares_the_slot_of_its_key_and_leads_back_to_it(key: str) -> None:
    assert key_slot(lease_key(key)) == key_slot(key)
    assert leased_key(lease_key(key)) == key
    assert leased_key(version_key(key)) is None


@pytest.mark.parametrize("name", ["", "cdc:l:", "cdc:l:{}:k", "cdc:l:{zz}:k", "k", "cdc:l:{a}k"])
def test_leased_key_rejects_what_is_no_lease_key(name: str) -> None:
    assert leased_key(name) is None


def test_key_slot_known_values() -> None:
    # Examples from the Redis Cluster specification's hash tag rules.
    assert key_slot("123456789") == 12739
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
