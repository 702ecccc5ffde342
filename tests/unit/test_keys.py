from __future__ import annotations

import unicodedata

import pytest
from cdc_cache_client.keys import GATE_MEMO_KEYS
from hypothesis import assume, given
from hypothesis import strategies as st

from cdc_cache.core.keys import (
    DEFAULT_NAMESPACE,
    MAX_VALUE_CHARS,
    SLOTS,
    Names,
    NamespaceError,
    escape_value,
    key_slot,
    ns,
    slot_tag,
    tag_for_slot,
    use_namespace,
    version_field,
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
    assert key_slot(ns().version_key(key)) == key_slot(key)


@given(AWKWARD_KEYS)
def test_version_buckets_are_few_and_every_one_is_known(key: str) -> None:
    # the sweeper visits every bucket by name, without scanning the keyspace
    assert ns().version_key(key) in _BUCKETS
    assert key_slot(ns().version_key(key, buckets=4)) == key_slot(key)


_BUCKETS = frozenset(ns().all_version_buckets())


def test_one_bucket_per_slot() -> None:
    assert len(_BUCKETS) == SLOTS
    assert {key_slot(b) for b in _BUCKETS} == set(range(SLOTS))


@given(AWKWARD_KEYS)
def test_legacy_version_key_leads_back_to_its_key(key: str) -> None:
    assert key_slot(ns().legacy_version_key(key)) == key_slot(key)
    assert ns().legacy_cache_key(ns().legacy_version_key(key)) == key
    assert ns().legacy_cache_key(ns().lease_key(key)) is None


@given(AWKWARD_KEYS)
def test_lease_key_shares_the_slot_of_its_key_and_leads_back_to_it(key: str) -> None:
    assert key_slot(ns().lease_key(key)) == key_slot(key)
    assert ns().leased_key(ns().lease_key(key)) == key
    assert ns().leased_key(ns().version_key(key)) is None


@given(AWKWARD_KEYS, st.sampled_from([DEFAULT_NAMESPACE, "shop-2"]))
def test_gate_keys_are_the_version_key_lease_key_and_version_field(key: str, space: str) -> None:
    names = Names(space)
    assert names.gate_keys(key) == (
        names.version_key(key),
        names.lease_key(key),
        version_field(key),
    )


@given(st.lists(AWKWARD_KEYS, min_size=1, max_size=20))
def test_gate_keys_asked_again_are_those_computed_fresh(keys: list[str]) -> None:
    names = Names("shop-2")
    first = [names.gate_keys(key) for key in keys]
    assert [names.gate_keys(key) for key in reversed(keys)] == first[::-1]
    assert first == [Names("shop-2").gate_keys(key) for key in keys]
    assert all(Names("other").gate_keys(key) != gate for key, gate in zip(keys, first, strict=True))


def test_gate_keys_keep_at_most_the_memo_bound_and_stay_right_past_it() -> None:
    names = Names()
    keys = [f"inv:item:{i}" for i in range(GATE_MEMO_KEYS + 100)]
    for key in keys:
        names.gate_keys(key)
        assert len(names._gate_memo) <= GATE_MEMO_KEYS
    assert all(
        names.gate_keys(key) == (names.version_key(key), names.lease_key(key), version_field(key))
        for key in keys[:: len(keys) // 50]
    )


@pytest.mark.parametrize("name", ["", "cdc:l:", "cdc:l:{}:k", "cdc:l:{zz}:k", "k", "cdc:l:{a}k"])
def test_leased_key_rejects_what_is_no_lease_key(name: str) -> None:
    assert ns().leased_key(name) is None


def test_key_slot_known_values() -> None:
    # Examples from the Redis Cluster specification's hash tag rules.
    assert key_slot("123456789") == 12739
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")


def every_name(names: Names) -> list[str]:
    """Every key name ``names`` builds, for a cache key, a tag, a channel and a source."""
    key = "stock:{7}:north"
    return [
        names.mode, names.mode_flag, names.heartbeats, names.lag_report(1),
        names.watchdog_lock, names.dlq_outcomes, names.channels, names.topics,
        names.continuity, names.continuity_decisions, names.lineage_source("dbserver1"),
        names.lineage_partitions, names.version_layout, names.replica_marker("a"),
        names.version_key(key), names.legacy_version_key(key), names.stream_key("wh:1"),
        names.tag_key("brand:7"), names.lease_key(key), names.outbox_key(key),
        names.relay_progress_key("wh:1"), *names.internal_prefixes,
    ]  # fmt: skip


def test_the_default_namespace_keeps_the_names_deployments_already_hold() -> None:
    assert every_name(Names()) == [
        "cdc:mode", "cdc:mode:flag", "cdc:mode:heartbeats", "cdc:mode:lag:1",
        "cdc:watchdog:lock", "cdc:dlq:replays", "cdc:channels", "cdc:topics",
        "cdc:continuity", "cdc:continuity:decisions", "cdc:lineage:{dbserver1}",
        "cdc:lineage:partitions", "cdc:vs:layout", "cdc:w:{a}",
        f"cdc:vs:{{{slot_tag('7')}}}:0", f"cdc:v:{{{slot_tag('7')}}}:stock:{{7}}:north",
        "cdc:n:wh:1", "cdc:t:brand:7", f"cdc:l:{{{slot_tag('7')}}}:stock:{{7}}:north",
        f"cdc:ob:{{{tag_for_slot(key_slot('7'))}}}",
        f"cdc:rp:{{{slot_tag('cdc:n:wh:1')}}}:wh:1", "cdc:vs:", "cdc:v:", "cdc:l:", "cdc:t:",
    ]  # fmt: skip
    assert ns() == Names()


def test_a_namespace_moves_every_name_and_keeps_each_in_its_cache_keys_slot() -> None:
    moved, default = every_name(Names("orders-eu.2")), every_name(Names())
    assert all(name.startswith("orders-eu.2:") for name in moved)
    assert not set(moved) & set(default)
    key = "stock:{7}:north"
    names = Names("orders-eu.2")
    assert key_slot(names.version_key(key)) == key_slot(names.lease_key(key)) == key_slot(key)
    assert key_slot(names.outbox_key(key)) == key_slot(key)
    assert names.leased_key(names.lease_key(key)) == key
    assert names.legacy_cache_key(names.legacy_version_key(key)) == key
    assert Names().leased_key(names.lease_key(key)) is None


@pytest.mark.parametrize("bad", ["", "a:b", "{x}", "a b", "x*", "-lead", "é", "n" * 33])
def test_a_namespace_with_key_syntax_is_refused(bad: str) -> None:
    with pytest.raises(NamespaceError, match="namespace"):
        Names(bad)


def test_use_namespace_names_this_process_keys() -> None:
    try:
        assert use_namespace("pipe-b").mode == ns().mode == "pipe-b:mode"
    finally:
        use_namespace(DEFAULT_NAMESPACE)
    assert ns().mode == "cdc:mode"
