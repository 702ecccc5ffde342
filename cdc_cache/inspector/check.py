"""One look at a sample: the cache against the row, with the order that keeps it fair.

Reads go through a :class:`Truth` (Redis and the database at the edge, dictionaries in
tests); what they mean is :mod:`cdc_cache.inspector.consistency`'s. See
:mod:`cdc_cache.inspector.loop` for when each look happens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdc_cache.core.errors import PoisonMessage
from cdc_cache.core.events import Row
from cdc_cache.inspector.consistency import (
    KeyFinding,
    Outcome,
    implications,
    judge_keys,
    judge_members,
    same_members,
    same_projection,
    strays,
    worst,
)
from cdc_cache.inspector.sampling import Sample
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.rules import KeyRule, TableRules
from cdc_cache.tools.index_judge import Pair, StoredIndex
from cdc_cache.tools.verify_judge import Stored


class Truth(Protocol):
    """What a check reads: the cache first, then the database."""

    def stored(self, keys: Mapping[str, ValueFormat]) -> dict[str, Stored]: ...

    def row(self, table: TableRules, key: Mapping[str, Any]) -> Row | None:
        """The row of ``table`` with primary key ``key``, values as the table caches them."""
        ...

    def owned(self, table: TableRules, primary_key: Sequence[str], key: str) -> bool:
        """Whether a row of ``table`` renders ``key`` (one query)."""
        ...

    def memberships(self, pairs: Mapping[Pair, KeyRule]) -> dict[str, StoredIndex]:
        """The index keys of ``pairs``, each with those of its members asked about it holds."""
        ...

    def implied(
        self, table: TableRules, primary_key: Sequence[str], rule: KeyRule, pair: Pair
    ) -> bool:
        """Whether a row of ``table`` implies ``pair`` (index key, member) (one query)."""
        ...


@dataclass(frozen=True, slots=True)
class Deferred:
    """The check has a doubt a change in flight may explain; it waits (see Inspector).

    The row differs from the newest change read (the stream has not brought the next
    one yet), or a key the row no longer renders holds a value no row renders (another
    row's change that empties it may be in flight).
    """

    queries: int


@dataclass(frozen=True, slots=True)
class Unrenderable:
    """A rule cannot render the row read or the newest change's image.

    The worker dead-letters such a row's changes (``render_failed``); a row that implies
    nothing cannot be judged (the inspector skips it, ``unrenderable``).
    """


@dataclass(frozen=True, slots=True)
class Judged:
    """The check's outcome, its keys' findings and the database queries it took."""

    outcome: Outcome
    findings: tuple[KeyFinding, ...]
    queries: int
    renders: Mapping[str, ValueFormat]  # the keys the row renders
    implies: Mapping[Pair, KeyRule] = field(default_factory=dict)  # its index memberships


def visible(sample: Sample, truth: Truth) -> bool:
    """Whether the cache shows the sample's newest change (no database read).

    Each key its image renders holds the image's projection, and each other key of the
    row is gone; each index it implies holds its member with its score, and each other
    index of the row not. An image the rules cannot render never shows (the check that
    follows skips the sample).
    """
    image = sample.event.image
    try:
        newest, implied = implications(sample.table, image, sample.primary_key)
    except PoisonMessage:
        return False
    stored = truth.stored(sample.keys)
    right = all(f.outcome is Outcome.CONSISTENT for f in judge_keys(newest, stored))
    if not right or strays(sample.keys, newest, stored):
        return False
    return not sample.members or not judge_members(implied, truth.memberships(sample.members))


def check(
    sample: Sample, truth: Truth, *, trusting: bool = False
) -> Deferred | Unrenderable | Judged:
    """Judge ``sample``'s keys against its row (see the module docstring for the order).

    A doubt (see :class:`Deferred`) defers the check unless ``trusting`` (the doubt
    outlived ``settle_s``); keys the row renders that none of the images read did are
    then read after the row.
    """
    table, primary_key = sample.table, sample.primary_key
    stored = truth.stored(sample.keys)
    held = truth.memberships(sample.members) if sample.members else {}
    row = truth.row(table, sample.event.key)
    try:
        expected, implied = implications(table, row, primary_key)
        newest, implied_newest = implications(table, sample.event.image, primary_key)
    except PoisonMessage:
        return Unrenderable()
    if not same_projection(expected, newest) or not same_members(implied, implied_newest):
        if not trusting:
            return Deferred(1)
        unseen = {key: op.format for key, op in expected.items() if key not in stored}
        stored |= truth.stored(unseen) if unseen else {}
        pairs = {**sample.members, **{pair: rule for pair, (rule, _) in implied.items()}}
        held = truth.memberships(pairs) if pairs.keys() - sample.members.keys() else held
    findings = judge_keys(expected, stored)
    queries = 1
    for key in strays(sample.keys, expected, stored):
        queries += 1
        if not truth.owned(table, primary_key, key):
            findings.append(KeyFinding(key, Outcome.UNEXPECTED))
    for finding in judge_members(implied, held):
        if finding.outcome is Outcome.UNEXPECTED and finding.member is not None:
            queries += 1
            pair = (finding.key, finding.member)
            if truth.implied(table, primary_key, sample.members[pair], pair):
                continue
        findings.append(finding)
    if not trusting and any(f.outcome is Outcome.UNEXPECTED for f in findings):
        return Deferred(queries)
    renders = {key: op.format for key, op in expected.items()}
    memberships = {pair: rule for pair, (rule, _) in implied.items()}
    return Judged(worst(findings), tuple(findings), queries, renders, memberships)
