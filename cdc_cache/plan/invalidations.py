"""What a change that cannot be applied as planned still does: delete every key it can render.

A change whose value cannot be rendered (a column the rules project was dropped by a
migration), whose value is too large, or whose writes Redis refuses must not leave its
keys serving the old row until their TTL. Every key the change's images still render
(after image, before image, or the primary key alone) is deleted at the change's
position, version-gated and leaving its tombstone like any delete, before the change goes
to the dead-letter queue. A key no image can render is named (template, why, rules line),
so the DLQ entry and a metric say what may still be stale.

Pure: plans and reports only; the writer applies the deletes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cdc_cache.core.events import ChangeEvent, Op, Row
from cdc_cache.plan.cache_ops import CacheOp, DeleteKey, IndexMember, InvalidatePrefix, SetRow
from cdc_cache.plan.rules import MissingColumn, TableRules


@dataclass(frozen=True, slots=True)
class Unreached:
    """A key the failed change may have made stale but cannot delete.

    ``key`` is the rule's template (row values never appear here, so sensitive columns
    cannot leak through it), or a rendered key whose delete failed, with the values of
    sensitive columns scrubbed; ``line`` is the rule's line in the rules file (0 if none).
    """

    key: str
    why: str
    line: int = 0


@dataclass(frozen=True, slots=True)
class Invalidation:
    """The deletes a failed change still allows, and the keys out of its reach."""

    deletes: tuple[DeleteKey, ...] = ()
    unreached: tuple[Unreached, ...] = ()


NOTHING = Invalidation()


def of_images(event: ChangeEvent, table: TableRules | None) -> Invalidation:
    """Every key of ``table``'s rules that one of ``event``'s images renders, deleted.

    The images are the after image, the before image, and, when an update or delete has
    no before image (PostgreSQL without REPLICA IDENTITY FULL), the primary key alone:
    a key that needs a column none of them carries, or that no image renders (a value
    nested too deep to print, text that is not UTF-8), is unreached. Each image is merged
    over the primary key, as the planner does for deletes.
    """
    if table is None or event.op is Op.TRUNCATE:
        return NOTHING
    images: list[tuple[str, Row]] = []
    if event.after is not None:
        images.append(("after", {**event.key, **event.after}))
    if event.before is not None:
        images.append(("before", {**event.key, **event.before}))
    elif event.op in (Op.UPDATE, Op.DELETE):
        images.append(("primary key", event.key))
    deletes: dict[str, DeleteKey] = {}
    unreached: list[Unreached] = []
    for rule in table.keys:
        for name, row in images:
            try:
                key = rule.template.render(row)
            except MissingColumn as exc:
                why = f"column '{exc.column}' is absent from the {name} image"
                unreached.append(Unreached(rule.template.source, why, rule.line))
                continue
            except Exception as exc:  # a value no key can hold (nested too deep, not UTF-8)
                why = f"rendering it from the {name} image raised {type(exc).__name__}"
                unreached.append(Unreached(rule.template.source, why, rule.line))
                continue
            deletes.setdefault(key, DeleteKey(key, event.position, table.tombstone_ttl_ms))
    return Invalidation(tuple(deletes.values()), tuple(dict.fromkeys(unreached)))


def of_ops(ops: Iterable[CacheOp]) -> Invalidation:
    """A delete of every key ``ops`` would have written or deleted (notifications dropped).

    For a change that was planned but could not be applied: its ops already name every
    key it touches (old and new). A prefix invalidation (TRUNCATE) that failed has no
    key to fall back on: its prefix is unreached. An index key is deleted whole: it may
    then lack the change's member, so it stays absent until rebuilt (``lua/apply.lua``).
    """
    deletes: dict[str, DeleteKey] = {}
    unreached: list[Unreached] = []
    for op in ops:
        if isinstance(op, SetRow | DeleteKey | IndexMember):
            deletes.setdefault(op.key, DeleteKey(op.key, op.position, op.tombstone_ttl_ms))
        elif isinstance(op, InvalidatePrefix):
            unreached.append(Unreached(f"{op.prefix}*", "the TRUNCATE's prefix scan failed"))
    return Invalidation(tuple(deletes.values()), tuple(unreached))


class KeyOutcome(StrEnum):
    """What happened to one key of an :class:`Invalidation` (the metric's ``outcome``)."""

    DELETED = "deleted"  # deleted at the change's position, its tombstone left
    SKIPPED = "skipped"  # the key already holds this change or a newer one
    UNVERSIONED = "unversioned"  # deleted by a plain DEL: its version key is unreadable
    UNREACHED = "unreached"  # no image renders it: it stays as it was


@dataclass(frozen=True, slots=True)
class Invalidated:
    """What applying an :class:`Invalidation` did, for the DLQ entry and the metrics.

    ``unversioned`` keys were deleted with a plain DEL because their version key could
    not be read (it holds another type), so no tombstone guards them; but no change can
    write them either until that version key is repaired.
    """

    counts: dict[KeyOutcome, int]
    unreached: tuple[Unreached, ...] = ()

    @classmethod
    def of(
        cls, plan: Invalidation, outcomes: Iterable[KeyOutcome], lost: Iterable[Unreached] = ()
    ) -> Invalidated:
        """The report of ``plan`` given one outcome per delete; ``lost`` deletes that failed."""
        counts = dict.fromkeys(KeyOutcome, 0)
        for outcome in outcomes:
            counts[outcome] += 1
        unreached = (*plan.unreached, *lost)
        counts[KeyOutcome.UNREACHED] = len(unreached)
        return cls(counts, unreached)

    def entry(self) -> dict[str, Any]:
        """As the DLQ entry's ``invalidation`` field."""
        return {
            **{outcome.value: count for outcome, count in self.counts.items()},
            "unreached_keys": [
                {"key": u.key, "why": u.why, "rules_line": u.line or None} for u in self.unreached
            ],
        }
