"""How old a dead letter's change may be for its replay to write values (pure).

Every version outlives its write by at least its tombstone TTL (the apply script keeps it
the longer of the key's TTL and the tombstone TTL, and the sweeper only removes it after),
and any change newer than a dead letter's was written after that change was committed.
"""

from __future__ import annotations

from typing import Final

from cdc_cache.core.events import ChangeEvent
from cdc_cache.plan.rules import Rules

INVALIDATED: Final = (
    "its keys invalidated, not written: older than the shortest tombstone TTL of the rules, "
    "or of no known commit time"
)
"""What a replay's outcome adds when :func:`writes_values` is false."""


def shortest_tombstone_ttl_ms(rules: Rules) -> int:
    """The shortest time any change leaves its version behind (every table's tombstone TTL)."""
    return min([rules.tombstone_ttl_ms, *(t.tombstone_ttl_ms for t in rules.tables.values())])


def writes_values(event: ChangeEvent, rules: Rules, now_ms: float) -> bool:
    """Whether a replayed change may write its values, or only invalidate its keys.

    While the change is younger than the shortest tombstone TTL, every newer change of its
    keys has left its version, and the gate judges the replay stale. Older, a newer
    delete's tombstone (or an expired key's version) may be gone, and the replay would
    write an old row back. Invalidating is right either way; a change that does not say
    when it was committed is taken as old.
    """
    committed = event.committed_at_ms
    return committed is not None and now_ms - committed < shortest_tombstone_ttl_ms(rules)
