"""Index keys (zadd, sadd) judged against the members their rows imply (pure).

A row's member ops come from the planner applied to a snapshot read of the row
(:func:`~cdc_cache.tools.verify_judge.derive`), as the worker plans them, so verify never
disagrees with the worker about which index a row belongs to, its member or its score.
Judged per index key, in the style of keys:

- **stale**: a member a row implies is absent from an index that exists, or present with
  another score, or the index key holds another type: readers are served an incomplete or
  wrong index;
- **missing**: the index key does not exist (expired, evicted, or left absent by the
  worker until a snapshot rebuilds it: its record says which). Reported apart;
- **unexpected**: a member no row implies, judged only when every row of the table was
  read (a sample cannot tell a stray member from an unread row's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cdc_cache.plan.cache_ops import IndexMember
from cdc_cache.plan.rules import KeyRule
from cdc_cache.tools.verify_judge import Finding

Pair = tuple[str, str]
"""An index key and one member of it."""


@dataclass
class ExpectedIndex:
    """An index key's rule and the members its rows imply (member → score; None for a set)."""

    rule: KeyRule
    members: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredIndex:
    """What Redis holds for an index key: members and scores (empty: absent).

    ``left_holding``: the index's record says the worker left members in it, so an absent
    index stays absent until a snapshot rebuilds it. ``exists``: for a read of some members
    only (the inspector's, trace's), whether the key exists; ``members`` then holds those
    of the members asked about that it holds, and None means a whole read (absent: empty).
    """

    members: Mapping[str, float | None]
    wrong_type: bool = False
    left_holding: bool = False
    exists: bool | None = None

    @property
    def absent(self) -> bool:
        """Whether the index key does not exist."""
        return not self.members if self.exists is None else not (self.exists or self.members)


@dataclass(frozen=True, slots=True)
class IndexIssue:
    """One finding of an index key: of one member, or of the whole key (``member`` None)."""

    finding: Finding
    member: str | None
    detail: str


def expected_indexes(members: Iterable[tuple[KeyRule, IndexMember]]) -> dict[str, ExpectedIndex]:
    """The index keys of the rows' member ops (``Derived.members``), with their members."""
    out: dict[str, ExpectedIndex] = {}
    for rule, op in members:
        out.setdefault(op.key, ExpectedIndex(rule)).members[op.member] = op.score
    return out


def judge_index(
    expected: Mapping[str, str | None], stored: StoredIndex, *, complete: bool
) -> list[IndexIssue]:
    """What is wrong with one index key, given the members its rows imply.

    ``complete``: ``expected`` holds every row's member, so a member beyond it is unexpected
    (of a read of some members, one of those read).
    """
    if stored.wrong_type:
        return [IndexIssue(Finding.STALE, None, "holds a key of another type than its rule's")]
    if stored.absent:
        if not expected:
            return []
        why = (
            "the worker left it holding members: absent until `cdc-cache snapshot` rebuilds it"
            if stored.left_holding
            else "TTL, eviction, or never written"
        )
        return [
            IndexIssue(Finding.MISSING, None, f"absent, {len(expected)} members expected ({why})")
        ]
    issues: list[IndexIssue] = []
    for member, score in expected.items():
        if member not in stored.members:
            issues.append(IndexIssue(Finding.STALE, member, f"member {member} absent"))
            continue
        held = stored.members[member]
        if score is not None and held != float(score):
            detail = f"member {member} scored {held!r}, row gives {score}"
            issues.append(IndexIssue(Finding.STALE, member, detail))
    if complete:
        issues += [
            IndexIssue(Finding.UNEXPECTED, member, f"member {member}: no row implies it")
            for member in stored.members
            if member not in expected
        ]
    return issues
