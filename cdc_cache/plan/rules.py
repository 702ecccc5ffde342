"""The rules: which cache keys each table's changes touch, and how (plain frozen data).

A rules file is read by ``plan.rules_loader``, which validates everything a change would
later need, so the pure planner never meets a rule it cannot follow.

Kept in one module: the compiled rules are one vocabulary of plain records (tables, keys,
templates, the columns they use) that the loader builds and the planner, the schema
watch and the tools read together; what a key adds to a plain one is apart
(:mod:`cdc_cache.plan.key_extras`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

from cdc_cache_client import tags

from cdc_cache.core.events import Row
from cdc_cache.core.identity import TableIdentity, split
from cdc_cache.core.keys import escape_value, ns
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.key_extras import KeyExtras, Snapshot
from cdc_cache.source.natural import (
    WIRE_VALUES,
    TableValues,
)

IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")

DEFAULT_SAFETY_TTL_MS: Final = 24 * 3_600_000
DEFAULT_TOMBSTONE_TTL_MS: Final = 3_600_000
DEFAULT_NOTIFY_MAXLEN: Final = 10_000


class Action(StrEnum):
    """What a key rule does with the row's key."""

    SET = "set"
    DELETE = "delete"
    ZADD = "zadd"  # the row is a member of a sorted set (an index key), scored by a column
    SADD = "sadd"  # the row is a member of a set (an index key)

    @property
    def indexes(self) -> bool:
        """The key is an index: the row is one member of it, gated per member."""
        return self in (Action.ZADD, Action.SADD)


class MissingColumn(KeyError):
    """A template needs a column that the row image does not carry."""

    def __init__(self, column: str) -> None:
        self.column = column
        super().__init__(column)


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """A key pattern such as ``stock:{sku_id}:{warehouse}``; ``{{``/``}}`` are literal braces.

    Compiled once into literal/column pieces so rendering is a join, not a parse. Values
    are rendered from the row as the planner has it: natural values for a table whose
    values are decoded (a DATE column reads ``2026-11-29``), else as Debezium shipped them.
    """

    source: str
    pieces: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, source: str, *, constant_ok: bool = False) -> KeyTemplate:
        """Compile ``source``; raises ValueError with a readable reason.

        ``constant_ok`` allows a template without placeholders (one notification channel
        for the whole table); a cache key template always needs one.
        """
        pieces: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in string.Formatter().parse(source):
            if name is not None:
                if spec or conversion:
                    msg = f"placeholder {{{name}}} may not carry a format spec or conversion"
                    raise ValueError(msg)
                if not IDENTIFIER.match(name):
                    msg = f"placeholder {{{name}}} is not a column name"
                    raise ValueError(msg)
            pieces.append((literal, name))
        if not constant_ok and not any(name for _, name in pieces):
            msg = "template has no {column} placeholder, so every row would share one key"
            raise ValueError(msg)
        return cls(source, tuple(pieces))

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns the template reads, in order of appearance."""
        return tuple(name for _, name in self.pieces if name is not None)

    @property
    def static_prefix(self) -> str:
        """The literal text before the first placeholder: where TRUNCATE looks for keys."""
        return self.pieces[0][0]

    def render(self, row: Row) -> str:
        """The key for ``row``; raises MissingColumn when a column is absent from the image."""
        out: list[str] = []
        for literal, name in self.pieces:
            out.append(literal)
            if name is not None:
                if name not in row:
                    raise MissingColumn(name)
                out.append(escape_value(row[name]))
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Dependency:
    """A key shows data of rows of another table (``parent``), found through a column.

    Directly (``through`` is None): the key's own row names the parent row in ``via``
    (``products.brand_id``). Many-to-many: each row of the join table ``through`` links one
    key (its columns from the join row: ``match`` maps a key column to a join column) to
    the parent row named in the join row's ``via``. See :mod:`cdc_cache.plan.dependencies`.
    """

    parent: str
    via: str
    through: str | None
    match: tuple[tuple[str, str], ...]
    line: int


@dataclass(frozen=True, slots=True)
class KeyRule:
    """One cache key a table's rows map to, and what a change does to it."""

    template: KeyTemplate
    action: Action
    fields: tuple[str, ...] | None
    format: ValueFormat
    ttl_ms: int
    line: int
    depends_on: tuple[Dependency, ...] = ()
    member: KeyTemplate | None = None
    """For an index key (zadd, sadd): the row's member of it, e.g. ``{id}``."""
    score: str | None = None
    """For a sorted-set index key (zadd): the numeric column that scores the member."""
    extras: KeyExtras | None = None


@dataclass(frozen=True, slots=True)
class LinkRule:
    """How rows of one table put a dependent key under its parent row's tag.

    ``key`` renders from the linking row once ``columns`` (key column, row column) rename
    its columns; ``via`` holds the parent's primary key. Derived from a :class:`Dependency`.
    """

    key: KeyTemplate
    columns: tuple[tuple[str, str], ...]
    parent: str
    via: str
    through: bool = False


@dataclass(frozen=True, slots=True)
class NotifyRule:
    """Where an applied change of a table is announced, and which of its values go along.

    ``channel`` renders from the row (after image, before image for deletes); ``maxlen``
    bounds the channel's Redis stream (approximately: ``XADD MAXLEN ~``).
    """

    channel: KeyTemplate
    fields: tuple[str, ...] | None
    maxlen: int
    line: int


class Use(StrEnum):
    """Where the rules name a column (what a change to it, or its absence, affects)."""

    KEY = "key"
    FIELDS = "fields"
    CHANNEL = "notify.channel"
    NOTIFY_FIELDS = "notify.fields"
    WATCH = "watch"
    SENSITIVE = "sensitive"
    COLUMNS = "columns"
    TYPES = "types"
    RENDER = "render"
    DEPENDS = "depends_on"
    TAGS = "invalidate_tags"
    MEMBER = "member"
    SCORE = "score"
    WHEN = "when"
    TTL = "ttl"

    @property
    def breaks_changes(self) -> bool:
        """Without the column, a change of the table cannot be applied as planned."""
        return self in (
            Use.KEY, Use.FIELDS, Use.CHANNEL, Use.NOTIFY_FIELDS, Use.DEPENDS, Use.TAGS,
            Use.MEMBER, Use.SCORE,
            Use.WHEN, Use.TTL,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ColumnUse:
    """One column named by the rules: where (``tables.<t>.keys[0].fields``), which line."""

    column: str
    use: Use
    where: str
    line: int


@dataclass(frozen=True, slots=True)
class TableRules:
    """Everything the planner needs for one table.

    ``uses`` lists every column the table's rules name, with its line, so a schema
    change can be checked against them (:mod:`cdc_cache.mode.schema_watch`). ``values`` says
    how its column values are cached (decoded into their natural form, or as Debezium
    ships them), see :mod:`cdc_cache.source.natural`.
    """

    table: str
    keys: tuple[KeyRule, ...]
    watch: frozenset[str] | None
    tombstone_ttl_ms: int
    sensitive: frozenset[str] = frozenset()
    notify: NotifyRule | None = None
    uses: tuple[ColumnUse, ...] = ()
    values: TableValues = WIRE_VALUES
    invalidate_tags: tuple[KeyTemplate, ...] = ()
    snapshot: Snapshot = Snapshot.WRITE
    line: int = 0  # where the rules file names the table

    @property
    def truncate_prefixes(self) -> tuple[str, ...]:
        """Distinct literal prefixes of this table's keys, for invalidating a TRUNCATE."""
        return tuple(dict.fromkeys(rule.template.static_prefix for rule in self.keys))


@dataclass(frozen=True, slots=True)
class Rules:
    """Compiled rules for every covered table.

    ``implicit_wire`` names the tables cached as Debezium ships their values only because
    the file chose nothing (rules version 1): the worker says so at start. ``identity`` is
    the ``table_identity`` setting the file was checked against (how tables are named).
    """

    tables: Mapping[str, TableRules]
    path: str = "<rules>"
    safety_ttl_ms: int = DEFAULT_SAFETY_TTL_MS
    tombstone_ttl_ms: int = DEFAULT_TOMBSTONE_TTL_MS
    implicit_wire: tuple[str, ...] = ()
    links: Mapping[str, tuple[LinkRule, ...]] = field(default_factory=dict)
    dependents: Mapping[str, tuple[KeyTemplate, ...]] = field(default_factory=dict)
    identity: TableIdentity = TableIdentity.DB_TABLE

    def for_table(self, table: str) -> TableRules | None:
        """Rules for ``table``, or None when the table is not covered."""
        return self.tables.get(table)

    def sensitive(self, table: str) -> frozenset[str]:
        """Columns of ``table`` that dead letters must not show (none if not covered)."""
        rules = self.tables.get(table)
        return rules.sensitive if rules is not None else frozenset()

    def of_server(self, server: str) -> Rules:
        """``server``'s tables as its database names them (``<db>.<table>``); ValueError if none.

        For the tools reading that database (verify, repair): no dependency links.
        """
        prefix = f"{server}."
        tables = {
            name[len(prefix) :]: replace(table, table=name[len(prefix) :])
            for name, table in self.tables.items()
            if name.startswith(prefix) and split(name)[0] == server
        }
        if self.identity is not TableIdentity.SERVER_DB_TABLE or not tables:
            servers = sorted({split(name)[0] or "(none)" for name in self.tables})
            msg = (
                f"{self.path} has no table of server {server!r} (servers named: "
                f"{', '.join(servers)}; table_identity: {self.identity})"
            )
            raise ValueError(msg)
        return Rules(
            tables, self.path, self.safety_ttl_ms, self.tombstone_ttl_ms, self.implicit_wire
        )

    @property
    def tags(self) -> bool:
        """True when changes keep or invalidate cache tags (depends_on, invalidate_tags)."""
        return bool(self.links) or any(t.invalidate_tags for t in self.tables.values())

    @property
    def expiring(self) -> bool:
        """True when some key's TTL is the time its row expires (``ttl: {until: ...}``)."""
        return any(
            rule.extras is not None and rule.extras.ttl is not None and rule.extras.ttl.until
            for table in self.tables.values()
            for rule in table.keys
        )

    @property
    def notifies(self) -> bool:
        """True when some table announces its changes (needs streams next to the cache)."""
        return any(table.notify is not None for table in self.tables.values())


def check_tag(tag: str, *, what: str = "tag") -> str:
    """``tag`` if it can name a cache tag in this process's namespace (see ``tags.check_tag``)."""
    return tags.check_tag(tag, what=what, namespace=ns().namespace)
