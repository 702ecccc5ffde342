"""A replayed dead letter writes values only while every newer version is still kept.

Versions outlive their writes by at least the tombstone TTL; past it, a newer delete's
tombstone may be gone and a written replay would bring an old row back
(``tests/integration/test_dlq.py`` shows it on Redis).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.events import ChangeEvent, Op
from cdc_cache.core.positions import SourcePosition
from cdc_cache.dlq.age import shortest_tombstone_ttl_ms, writes_values
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import parse_rules

RULES = parse_rules("""
defaults: {tombstone_ttl: 30m}
tables:
  shop.orders:
    keys: [{key: "order:{id}"}]
  shop.lines:
    tombstone_ttl: 10m
    keys: [{key: "order:{order_id}", action: delete}]
""")
NOW_MS = 1_800_000_000_000


def committed(at_ms: int | None, table: str = "shop.orders") -> ChangeEvent:
    return ChangeEvent(
        table=table,
        op=Op.CREATE,
        before=None,
        after={"id": 1, "order_id": 1},
        key={"id": 1},
        position=SourcePosition(0, 1, 4, 0),
        committed_at_ms=at_ms,
    )


def test_the_shortest_tombstone_ttl_of_any_table_bounds_every_replay() -> None:
    # A newer change of the key may come from the table that keeps its versions least long.
    assert shortest_tombstone_ttl_ms(RULES) == 600_000
    assert shortest_tombstone_ttl_ms(Rules({}, tombstone_ttl_ms=5)) == 5


@given(st.integers(min_value=0, max_value=599_999))
def test_a_change_younger_than_the_horizon_writes_its_values(age_ms: int) -> None:
    assert writes_values(committed(NOW_MS - age_ms), RULES, NOW_MS)


@given(st.integers(min_value=600_000, max_value=10**12), st.sampled_from(["shop.orders", "x.y"]))
def test_an_older_change_only_invalidates_its_keys(age_ms: int, table: str) -> None:
    assert not writes_values(committed(NOW_MS - age_ms, table), RULES, NOW_MS)


def test_a_change_of_no_known_commit_time_only_invalidates_its_keys() -> None:
    assert not writes_values(committed(None), RULES, NOW_MS)
