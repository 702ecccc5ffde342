"""Dependent keys judged against the dependency index (pure): what verify can say of them.

A dependent key (``depends_on``) holds what the application rendered (a product page with
its brand's name), so its value cannot be recomputed. What can be judged is whether the
worker will keep it right, and whether it missed a delete:

- **Unlinked**: a row of the database links the key to a parent row (``products.brand_id``,
  a join row), and the parent's tag holds no present member for it: a change of that parent
  would leave the key as it is. Links come from :func:`~cdc_cache.plan.dependencies.
  plan_dependencies` applied to a snapshot read of the row, as the worker plans them.
- **Escaped**: the key is cached and its version is older than the newest change it must
  have been deleted at: the parent's last invalidation (the tag's version) or the change
  that linked it (whose own ops delete the key). An invalidation, its catch-up and the
  linking change all delete the key at their position, so a cached key below that position
  kept a value no delete reached. (Also after a fan-out above ``fanout_limit``, which
  shortens the keys' TTLs instead: they are reported until those TTLs end.)
- **Unjudged**: the key is cached without a version (swept after its tombstone horizon):
  its age is unknown.

A member the database no longer implies (a row that moved to another parent and whose
tombstone was lost) only costs a needless delete and is not judged; neither are the
members application fills put under any tag, nor the values themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cdc_cache_client.tags import member

from cdc_cache.core.events import Row
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import LinkKey
from cdc_cache.plan.dependencies import plan_dependencies
from cdc_cache.plan.rules import Rules, TableRules
from cdc_cache.sink.versions import encode_version
from cdc_cache.tools.verify_judge import snapshot_read

_PRESENT: Final = "+"


class LinkFinding(StrEnum):
    """What is wrong with one dependent key's link (see the module docstring)."""

    UNLINKED = "unlinked"
    ESCAPED = "escaped"
    UNJUDGED = "unjudged"


FAILING_LINKS: Final = frozenset({LinkFinding.UNLINKED, LinkFinding.ESCAPED})


@dataclass(frozen=True, slots=True)
class Link:
    """A dependent key under a parent row's tag, put there by a row (``link``)."""

    tag: str
    key: str
    link: str

    @property
    def member(self) -> str:
        """The field of the tag's hash that holds this link."""
        return member(self.key, self.link)


@dataclass(frozen=True, slots=True)
class LinkState:
    """What Redis holds for a link.

    Its member's value in the tag, the tag's version (the position of its last
    invalidation), and the key: cached or not, and its version.
    """

    member: str | None
    tag_version: str | None
    key_present: bool
    key_version: str | None


def expected_links(
    rules: Rules, table: TableRules, row: Row, primary_key: tuple[str, ...]
) -> list[Link]:
    """The links ``row`` of ``table`` implies, as the worker plans them for a snapshot read."""
    event = snapshot_read(table, row, primary_key)
    return [
        Link(op.tag, op.key, op.link)
        for op in plan_dependencies(event, rules)
        if isinstance(op, LinkKey) and op.present
    ]


def judge_link(state: LinkState) -> LinkFinding | None:
    """The finding for one link the database implies (None: nothing wrong)."""
    if state.member is None or not state.member.startswith(_PRESENT):
        return LinkFinding.UNLINKED
    if not state.key_present:
        return None
    if state.key_version is None:
        return LinkFinding.UNJUDGED
    newest = max(state.member[len(_PRESENT) :], state.tag_version or "")
    deleted_at = encode_version(SourcePosition.decode(newest), delete=True)
    return LinkFinding.ESCAPED if state.key_version < deleted_at else None


def describe_link(finding: LinkFinding, link: Link, state: LinkState) -> str:
    if finding is LinkFinding.UNLINKED:
        held = "no member" if state.member is None else f"member {state.member[:1]} (taken out)"
        return f"{link.key} under {link.tag} (by {link.link}): the tag holds {held}"
    if finding is LinkFinding.ESCAPED:
        return (
            f"{link.key} under {link.tag}: cached at version {state.key_version}, older than "
            f"the tag's version {state.tag_version or 'none'} or its link's {state.member}"
        )
    return f"{link.key}: cached without a version"
