"""One look at a sample: the cache against the row, with the order that keeps it fair.

Reads go through a :class:`Truth` (Redis and the database at the edge, dictionaries in
tests); what they mean is :mod:`cdc_cache.inspector.consistency`'s. See
:mod:`cdc_cache.inspector.loop` for when each look happens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cdc_cache.core.errors import PoisonMessage
from cdc_cache.core.events import Row
from cdc_cache.inspector.consistency import (
    KeyFinding,
    Outcome,
    judge_keys,
    rendered,
    same_projection,
    strays,
    worst,
)
from cdc_cache.inspector.sampling import Sample
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.rules import TableRules
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
    """A rule cannot render the row (the worker dead-letters such a change)."""


@dataclass(frozen=True, slots=True)
class Judged:
    """The check's outcome, its keys' findings and the database queries it took."""

    outcome: Outcome
    findings: tuple[KeyFinding, ...]
    queries: int
    renders: Mapping[str, ValueFormat]  # the keys the row renders


def visible(sample: Sample, truth: Truth) -> bool:
    """Whether the cache shows the sample's newest change (no database read).

    Each key its image renders holds the image's projection, and each other key of the
    row is gone.
    """
    try:
        newest = rendered(sample.table, sample.event.image, sample.primary_key)
    except PoisonMessage:
        return False
    stored = truth.stored(sample.keys)
    right = all(f.outcome is Outcome.CONSISTENT for f in judge_keys(newest, stored))
    return right and not strays(sample.keys, newest, stored)


def check(
    sample: Sample, truth: Truth, *, trusting: bool = False
) -> Deferred | Unrenderable | Judged:
    """Judge ``sample``'s keys against its row (see the module docstring for the order).

    A doubt (see :class:`Deferred`) defers the check unless ``trusting`` (the doubt
    outlived ``settle_s``); keys the row renders that none of the images read did are
    then read after the row.
    """
    stored = truth.stored(sample.keys)
    row = truth.row(sample.table, sample.event.key)
    try:
        expected = rendered(sample.table, row, sample.primary_key)
        newest = rendered(sample.table, sample.event.image, sample.primary_key)
    except PoisonMessage:
        return Unrenderable()
    if not same_projection(expected, newest):
        if not trusting:
            return Deferred(1)
        unseen = {key: op.format for key, op in expected.items() if key not in stored}
        stored |= truth.stored(unseen) if unseen else {}
    findings = judge_keys(expected, stored)
    queries = 1
    for key in strays(sample.keys, expected, stored):
        queries += 1
        if not truth.owned(sample.table, sample.primary_key, key):
            findings.append(KeyFinding(key, Outcome.UNEXPECTED))
    if not trusting and any(f.outcome is Outcome.UNEXPECTED for f in findings):
        return Deferred(queries)
    renders = {key: op.format for key, op in expected.items()}
    return Judged(worst(findings), tuple(findings), queries, renders)
