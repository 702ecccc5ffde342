"""Invalidation across tables: what a change does to the keys that show other rows.

One mechanism serves foreign-key dependencies and the application's cache tags: a **tag**
names a set of cache keys (its members), and invalidating the tag deletes them all.

- Every row of a table that other keys depend on has a tag: ``<table>:<primary key>``
  (``catalog.brands:7``). A change of that row (insert, delete, a watched column) invalidates
  it: :class:`~cdc_cache.plan.cache_ops.InvalidateTag` at the change's position.
- The worker keeps each dependent key under its parents' tags from the dependent rows' own
  changes (:class:`~cdc_cache.plan.cache_ops.LinkKey`): a product row with ``brand_id`` 7
  puts ``product:{id}:page`` under ``catalog.brands:7``; a join row ``(product_id, tag_id)``
  puts ``product:{product_id}:page`` under ``catalog.tags:{tag_id}`` (and its own change
  deletes that key, whose value lists the tags). A product that moves to brand 8 leaves
  brand 7's tag and enters brand 8's at the same position.
- ``invalidate_tags`` in the rules invalidates tags named by templates (``listing:{brand_id}``,
  rendered from the before and the after image) on any change of a table, and application
  fills through ``CacheAside`` put their keys under any tags they name. So a key cached
  from an arbitrary query is invalidated by whichever tables' changes the rules say.

Why it converges (reordering across topics and partitions, duplicates, replays):

1. **Membership is version-gated per member.** A member is (tag, key, link), the link
   being the row that put the key there (``catalog.products:1``), so two rows placing one
   key under one tag (two order lines of the same product) never undo each other. A link op
   applies only if its position is newer than the member's last one; taking a member out
   leaves a tombstone (same horizon as key tombstones), so a late older insert cannot put
   back a member that a newer update moved or a delete removed. Any order of one member's
   ops ends at the newest.
2. **Catch-up.** Each tag keeps the position of its last invalidation. Topics are read
   with skew, so a parent change can be applied before the child change that linked the
   child to it: the parent then finds no member, and the child's own delete, arriving
   later, can be gated as stale by an unrelated newer delete of the key, leaving a fill
   that read the database between the link and the parent change cached with the parent's
   old data. So a link op that puts a key under a tag whose version is newer than the
   link deletes the key at the tag's version (gated like any delete), whether or not the
   link op itself applied (a replay after a crash between the two steps redoes it).
3. **Fills check their tags.** A fill (``CacheAside.get(..., tags=[...])``) reads its tags'
   versions before it loads, adds its key to each tag before it writes, and writes only if
   no tag's version moved and the key's lease is intact. An invalidation either ran before
   the fill read the versions (the load sees the new row), or it moved a version (the fill
   does not land), or it finds the member and deletes the key, which voids the lease.

Atomicity. Every op above is idempotent and gated by its own version, so none needs to be
atomic with another: a batch's key ops are applied first, then its link ops and tag
invalidations in order (on Redis Cluster a tag lives in its own slot, apart from the key),
the link op, the catch-up delete in the key's slot and each page of an invalidation's
deletes being separate steps, on one server as on Cluster. A crash between them is finished
by the replay of the same change (the recovery snapshot never moves past an unapplied
batch). Catch-up is what stands in for atomicity: the one failure of a link op apart from
the row's ops (a parent change applied between them finds no member) is what it repairs.
The model-based test (``tests/unit/test_dependencies_model.py``) drives skewed topics,
duplicates, replays and fills, with the link ops applied apart from the row's own ops, and
shows which of the three rules each outcome depends on.

Limits: a parent's primary key is one column (the tag is rendered from the child's
``via`` column); a NULL ``via`` links to nothing; a ``via`` naming a missing row links to
that row's tag anyway, so inserting the row later invalidates the key.
"""

from __future__ import annotations

from cdc_cache.core.errors import RenderError
from cdc_cache.core.events import ChangeEvent, Op, Row
from cdc_cache.core.keys import escape_value
from cdc_cache.plan.cache_ops import (
    DeleteKey,
    DependencyOp,
    InvalidatePrefix,
    InvalidateTag,
    LinkKey,
)
from cdc_cache.plan.planner import watched_change
from cdc_cache.plan.rules import KeyTemplate, LinkRule, MissingColumn, Rules

Link = tuple[str, str]  # (tag, key)


def row_tag(table: str, key: Row) -> str:
    """The tag of a row other keys depend on: ``<table>:<primary key values>``."""
    return f"{table}:{':'.join(escape_value(value) for value in key.values())}"


def plan_dependencies(event: ChangeEvent, rules: Rules) -> list[DependencyOp]:
    """The tag and index ops of ``event``: links it moves, tags it invalidates.

    Pure, like :func:`~cdc_cache.plan.planner.plan`, whose ops for the row's own keys go
    with these. Raises RenderError when an image lacks a column a link or a tag needs.
    """
    table = rules.for_table(event.table)
    links = rules.links.get(event.table, ())
    parent_of = event.table in rules.dependents
    if table is None or not (links or parent_of or table.invalidate_tags):
        return []
    if event.op is Op.TRUNCATE:
        return _truncate(event, rules)
    if event.op is Op.UPDATE and not watched_change(event, table):
        return []
    ops: list[DependencyOp] = []
    if links:
        ops.extend(_link_ops(event, links, table.tombstone_ttl_ms))
    if parent_of:
        if len(event.key) != 1:
            msg = (
                f"{event.table} {event.op.value} at {event.position}: keys depend on this "
                f"table, whose primary key has {len(event.key)} columns; a parent of "
                "depends_on needs a one-column primary key"
            )
            raise RenderError(msg)
        prefixes = tuple(dict.fromkeys(t.static_prefix for t in rules.dependents[event.table]))
        tag = row_tag(event.table, event.key)
        ops.append(InvalidateTag(tag, event.position, table.tombstone_ttl_ms, prefixes))
    for template in table.invalidate_tags:
        for image in _images(event):
            tag = _render(template, image, event)
            ops.append(InvalidateTag(tag, event.position, table.tombstone_ttl_ms))
    return _unique(ops)


def _truncate(event: ChangeEvent, rules: Rules) -> list[DependencyOp]:
    """A TRUNCATE of a parent or join table: every key that depends on it goes."""
    table = rules.tables[event.table]
    templates = [
        *rules.dependents.get(event.table, ()),
        *(link.key for link in rules.links.get(event.table, ()) if link.through),
    ]
    prefixes = dict.fromkeys(t.static_prefix for t in templates)
    return [
        InvalidatePrefix(prefix, event.table, event.position, table.tombstone_ttl_ms)
        for prefix in prefixes
    ]


def _link_ops(
    event: ChangeEvent, rules: tuple[LinkRule, ...], tombstone_ttl_ms: int
) -> list[DependencyOp]:
    old = _links(event, rules, before=True)
    new = _links(event, rules, before=False)
    link = row_tag(event.table, event.key)
    position = event.position
    ops: list[DependencyOp] = [
        LinkKey(tag, key, link, position, False, tombstone_ttl_ms)
        for tag, key in old
        if (tag, key) not in new
    ]
    ops.extend(
        LinkKey(tag, key, link, position, True, tombstone_ttl_ms)
        for tag, key in new
        if (tag, key) not in old
    )
    # A join row shapes its key's value (the page lists the tags): its change deletes it.
    through = [rule for rule in rules if rule.through]
    if through and (old or new):
        keys = dict.fromkeys(key for tag, key in (*old, *new) if _through_tag(tag, through))
        ops.extend(DeleteKey(key, position, tombstone_ttl_ms) for key in keys)
    return ops


def _through_tag(tag: str, rules: list[LinkRule]) -> bool:
    return any(tag.startswith(f"{rule.parent}:") for rule in rules)


def _links(event: ChangeEvent, rules: tuple[LinkRule, ...], *, before: bool) -> dict[Link, None]:
    """The (tag, key) pairs the row had before the change, or has after it."""
    image: Row
    if before:
        if event.op in (Op.CREATE, Op.READ):
            return {}
        if event.op is Op.UPDATE and event.before is None:
            return _unchanged_links(event, rules)
        image = {**event.key, **(event.before or {})}
    else:
        if event.op is Op.DELETE or event.after is None:
            return {}
        image = event.after
    out: dict[Link, None] = {}
    for rule in rules:
        if image.get(rule.via, None) is None and rule.via in image:
            continue  # a NULL foreign key links to nothing
        try:
            key = rule.key.render({column: image[source] for column, source in rule.columns})
            parent = image[rule.via]
        except KeyError as exc:
            column = exc.args[0]
            msg = (
                f"{event.table} {event.op.value} at {event.position}: the dependency of "
                f"'{rule.key.source}' on {rule.parent} needs column '{column}', absent from "
                f"the {'before' if before else 'after'} image; set REPLICA IDENTITY FULL on "
                "the table (PostgreSQL)"
            )
            raise RenderError(msg) from None
        out[(f"{rule.parent}:{escape_value(parent)}", key)] = None
    return out


def _unchanged_links(event: ChangeEvent, rules: tuple[LinkRule, ...]) -> dict[Link, None]:
    """Without a before image the links are known only when key columns alone make them."""
    for rule in rules:
        needed = (rule.via, *(source for _, source in rule.columns))
        missing = [column for column in needed if column not in event.key]
        if missing:
            msg = (
                f"{event.table} update at {event.position} has no before image, but the "
                f"dependency of '{rule.key.source}' on {rule.parent} reads {missing[0]!r} of "
                "the old row; set REPLICA IDENTITY FULL on the table (PostgreSQL)"
            )
            raise RenderError(msg)
    return _links(
        ChangeEvent(event.table, Op.CREATE, None, event.key, event.key, event.position, None),
        rules,
        before=False,
    )


def _images(event: ChangeEvent) -> list[Row]:
    """The row images a tag template renders from: before (with the key) and after."""
    images: list[Row] = []
    if event.op in (Op.UPDATE, Op.DELETE):
        images.append({**event.key, **(event.before or {})})
    if event.after is not None and event.op is not Op.DELETE:
        images.append(event.after)
    return images


def _render(template: KeyTemplate, image: Row, event: ChangeEvent) -> str:
    try:
        return template.render(image)
    except MissingColumn as exc:
        msg = (
            f"{event.table} {event.op.value} at {event.position}: tag '{template.source}' "
            f"needs column '{exc.column}', absent from the row image; set REPLICA IDENTITY "
            "FULL on the table (PostgreSQL)"
        )
        raise RenderError(msg) from exc


def _unique(ops: list[DependencyOp]) -> list[DependencyOp]:
    return list(dict.fromkeys(ops))
