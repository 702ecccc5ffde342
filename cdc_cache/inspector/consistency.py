"""How a sampled row's cache keys compare with the row (pure; used by ``cdc-cache inspect``).

The expected keys and values come from the planner, through
:func:`cdc_cache.tools.verify_judge.derive` (a snapshot read of the row), so the inspector
judges with the worker's own projection and serialisation, like ``cdc-cache verify``. One
check has four outcomes:

* ``consistent``: every key the row renders holds the row's projection;
* ``stale``: a key holds another value (or the wrong type);
* ``missing``: a key is absent (evicted, expired, never filled): a reader misses and loads
  the row, so it is not counted against consistency;
* ``unexpected``: a key an earlier image of the row rendered (a deleted row, a row that
  moved to another key) still holds a value and no row renders it.

``stale`` and ``unexpected`` are the inconsistencies: a reader would be served a value the
database does not hold.

Index keys (zadd, sadd) are judged by the row's membership in them, through
:func:`cdc_cache.tools.index_judge.judge_index` as ``verify`` judges them, on the members
the row's images and the row imply: ``stale`` a member absent from an index that exists,
scored otherwise, or an index of another type; ``missing`` an absent index (also one the
worker left absent until a snapshot rebuilds it); ``unexpected`` a member of an index the
row no longer implies (deleted, or moved to another index) that no row implies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import orjson

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import Row
from cdc_cache.plan.cache_ops import SetRow
from cdc_cache.plan.rules import KeyRule, TableRules
from cdc_cache.tools.index_judge import IndexIssue, Pair, StoredIndex, judge_index
from cdc_cache.tools.verify_judge import Finding, Stored, derive, judge, same_value

Implied = Mapping[Pair, tuple[KeyRule, str | None]]
"""A row's index memberships: each pair's rule and score (None for a set)."""


class Outcome(StrEnum):
    """The result of one check of a sampled change."""

    CONSISTENT = "consistent"
    STALE = "stale"
    MISSING = "missing"
    UNEXPECTED = "unexpected"


INCONSISTENT: Final = frozenset({Outcome.STALE, Outcome.UNEXPECTED})
# Most severe first: a check's outcome is the worst of its keys'.
_SEVERITY: Final = (Outcome.UNEXPECTED, Outcome.STALE, Outcome.MISSING, Outcome.CONSISTENT)
_FROM_FINDING: Final = {
    None: Outcome.CONSISTENT,
    Finding.VERSION: Outcome.CONSISTENT,  # the value is right; versions are verify's concern
    Finding.STALE: Outcome.STALE,
    Finding.MISSING: Outcome.MISSING,
    Finding.UNEXPECTED: Outcome.UNEXPECTED,
}


@dataclass(frozen=True, slots=True)
class KeyFinding:
    """One key's outcome (of an index key: of the row's ``member`` of it, or of the key).

    ``fields`` names the projected fields that differ, never their values: these go to
    logs and the HTTP page, and a row may hold sensitive values (an index's: ``member``
    absent, ``score`` another).
    """

    key: str
    outcome: Outcome
    fields: tuple[str, ...] = ()
    member: str | None = None
    index: bool = False  # an index key's finding (of its member, or of the whole key)


def implications(
    table: TableRules, row: Row | None, primary_key: Sequence[str]
) -> tuple[dict[str, SetRow], Implied]:
    """The ``set`` keys ``row`` renders and the index memberships it implies, from one run.

    Both empty for an absent row; the keys come with the values they would hold.

    Raises :class:`~cdc_cache.core.errors.RenderError` (a poison error), with ``derive``'s
    reason, for a row the rules cannot render (a NULL score of a zadd index, a column a
    rule needs absent). The worker dead-letters such a row's changes, so its keys cannot
    be judged: read as a row that implies nothing, it would pass as consistent, or make
    strays of its keys. (``verify`` lists such a row with its reason, through ``derive``.)
    """
    if row is None:
        return {}, {}
    derived = derive(table, row, primary_key)
    if derived.unrenderable is not None:
        raise RenderError(derived.unrenderable)
    keys = {op.key: op for _, op in derived.sets}
    return keys, {(op.key, op.member): (rule, op.score) for rule, op in derived.members}


def same_members(left: Implied, right: Implied) -> bool:
    """Whether two rows imply the same memberships with the same scores."""
    return left.keys() == right.keys() and all(
        _number(score) == _number(right[pair][1]) for pair, (_, score) in left.items()
    )


def _number(score: str | None) -> float | None:
    return None if score is None else float(score)


def judge_members(expected: Implied, held: Mapping[str, StoredIndex]) -> list[KeyFinding]:
    """The row's memberships against the index keys read (``held``: every expected pair's).

    Only what is wrong is listed. Each index read is judged on the members read of it, so a
    member read that the row does not imply is unexpected (the caller asks whether another
    row implies it). An index of another type the row no longer renders is not the row's.
    """
    findings = []
    for key, stored in sorted(held.items()):
        want = {member: score for (k, member), (_, score) in expected.items() if k == key}
        if stored.wrong_type and not want:
            continue
        for issue in judge_index(want, stored, complete=True):
            outcome = _FROM_FINDING[issue.finding]
            fields = _index_fields(issue, stored)
            findings.append(KeyFinding(key, outcome, fields, issue.member, index=True))
    return findings


def _index_fields(issue: IndexIssue, stored: StoredIndex) -> tuple[str, ...]:
    if issue.finding is Finding.MISSING:
        return ("(absent until cdc-cache snapshot)",) if stored.left_holding else ()
    if issue.finding is Finding.STALE:
        if issue.member is None:
            return ("(wrong type)",)
        return ("score",) if issue.member in stored.members else ("member",)
    return ()


def same_projection(left: Mapping[str, SetRow], right: Mapping[str, SetRow]) -> bool:
    """Whether two rows render the same keys with the same values."""
    return left.keys() == right.keys() and all(
        same_value(op, _stored_form(right[key])) for key, op in left.items()
    )


def _stored_form(op: SetRow) -> bytes | Mapping[str, str]:
    return op.value if isinstance(op.value, bytes) else dict(op.value)


def judge_keys(expected: Mapping[str, SetRow], stored: Mapping[str, Stored]) -> list[KeyFinding]:
    """Each expected key against what Redis holds for it."""
    findings = []
    for key, op in expected.items():
        held = stored.get(key, Stored(None))
        outcome = _FROM_FINDING[judge(op, held)]
        fields = differing_fields(op, held) if outcome is Outcome.STALE else ()
        findings.append(KeyFinding(key, outcome, fields))
    return findings


def strays(
    keys: Iterable[str], expected: Mapping[str, SetRow], stored: Mapping[str, Stored]
) -> list[str]:
    """The ``keys`` the row no longer renders that still hold something (to look up)."""
    return sorted(k for k in keys if k not in expected and stored.get(k, Stored(None)).present)


def worst(findings: Iterable[KeyFinding]) -> Outcome:
    """The check's outcome: its most severe key's (consistent when there are none)."""
    seen = {f.outcome for f in findings}
    return next((o for o in _SEVERITY if o in seen), Outcome.CONSISTENT)


def differing_fields(expected: SetRow, stored: Stored) -> tuple[str, ...]:
    """The projected fields whose stored value differs from the row's, by name."""
    if stored.wrong_type:
        return ("(wrong type)",)
    want = _document(expected.value)
    got = _document(stored.value)
    if want is None or got is None:
        return ("(value)",)
    absent = object()
    names = want.keys() | got.keys()
    return tuple(sorted(n for n in names if want.get(n, absent) != got.get(n, absent)))


def _document(value: object) -> dict[str, object] | None:
    if isinstance(value, tuple):
        return dict(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, bytes):
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None
    return None
