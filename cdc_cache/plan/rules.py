"""The rules file: which cache keys each table's changes touch, and how.

Loading validates everything a change would later need, so a bad file stops startup with
``file:line: where: what is wrong; how to fix`` for every problem found, never at the first
event. The compiled rules are plain frozen data for the pure planner.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final, TypeVar

import yaml

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.events import Row
from cdc_cache.core.keys import LEGACY_VERSION_PREFIX, VERSION_PREFIX, escape_value
from cdc_cache.core.logical import ColumnType, Kind, declared
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.source.natural import (
    RENDER_CHOICES,
    WIRE_VALUES,
    Decimals,
    Rendering,
    TableValues,
    Timestamps,
    Values,
)

_DURATION: Final = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_TABLE_NAME: Final = re.compile(r"^[^.\s]+\.[^.\s]+$")
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")

_E = TypeVar("_E", bound=StrEnum)

DEFAULT_SAFETY_TTL_MS: Final = 24 * 3_600_000
DEFAULT_TOMBSTONE_TTL_MS: Final = 3_600_000
DEFAULT_NOTIFY_MAXLEN: Final = 10_000
RULES_VERSIONS: Final = (1, 2)
# What a rules file caches when it does not choose: version 1 keeps Debezium's wire values.
VERSION_VALUES: Final = {1: Values.WIRE, 2: Values.NATURAL}
_TIMESTAMP_KINDS: Final = frozenset(
    {Kind.TIMESTAMP_MS, Kind.TIMESTAMP_US, Kind.TIMESTAMP_NS, Kind.ZONED_TIMESTAMP}
)
_DECIMAL_KINDS: Final = frozenset({Kind.DECIMAL, Kind.VARIABLE_DECIMAL})


class Action(StrEnum):
    """What a key rule does with the row's key."""

    SET = "set"
    DELETE = "delete"


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
                if not _IDENTIFIER.match(name):
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
class KeyRule:
    """One cache key a table's rows map to, and what a change does to it."""

    template: KeyTemplate
    action: Action
    fields: tuple[str, ...] | None
    format: ValueFormat
    ttl_ms: int
    line: int


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

    @property
    def breaks_changes(self) -> bool:
        """Without the column, a change of the table cannot be applied as planned."""
        return self in (Use.KEY, Use.FIELDS, Use.CHANNEL, Use.NOTIFY_FIELDS)


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

    @property
    def truncate_prefixes(self) -> tuple[str, ...]:
        """Distinct literal prefixes of this table's keys, for invalidating a TRUNCATE."""
        return tuple(dict.fromkeys(rule.template.static_prefix for rule in self.keys))


@dataclass(frozen=True, slots=True)
class Rules:
    """Compiled rules for every covered table.

    ``implicit_wire`` names the tables cached as Debezium ships their values only because
    the file chose nothing (rules version 1): the worker says so at start.
    """

    tables: Mapping[str, TableRules]
    path: str = "<rules>"
    safety_ttl_ms: int = DEFAULT_SAFETY_TTL_MS
    tombstone_ttl_ms: int = DEFAULT_TOMBSTONE_TTL_MS
    implicit_wire: tuple[str, ...] = ()

    def for_table(self, table: str) -> TableRules | None:
        """Rules for ``table``, or None when the table is not covered."""
        return self.tables.get(table)

    def sensitive(self, table: str) -> frozenset[str]:
        """Columns of ``table`` that dead letters must not show (none if not covered)."""
        rules = self.tables.get(table)
        return rules.sensitive if rules is not None else frozenset()

    @property
    def notifies(self) -> bool:
        """True when some table announces its changes (needs streams next to the cache)."""
        return any(table.notify is not None for table in self.tables.values())


def parse_duration_ms(value: object) -> int:
    """``500ms``, ``30s``, ``15m``, ``24h``, ``7d`` or a bare number of seconds → ms."""
    if isinstance(value, bool):
        msg = f"{value!r} is not a duration"
        raise ValueError(msg)
    if isinstance(value, int):
        ms = value * 1000
    else:
        match = _DURATION.match(str(value))
        if match is None:
            msg = f"{value!r} is not a duration; write e.g. 500ms, 30s, 15m, 24h or 7d"
            raise ValueError(msg)
        ms = int(match.group(1)) * _UNIT_MS[match.group(2) or "s"]
    if ms <= 0:
        msg = f"duration {value!r} must be positive"
        raise ValueError(msg)
    return ms


def load_rules(path: str | Path) -> Rules:
    """Read and validate a rules file; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read rules file {path}: {exc.strerror}; pass an existing file with --rules"
        raise ConfigError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"rules file {unreadable_yaml(str(path), exc)}"
        raise ConfigError(msg) from None
    return parse_rules(text, str(path))


def unreadable_yaml(path: str, exc: yaml.YAMLError | UnicodeDecodeError | RecursionError) -> str:
    """One line: why the YAML file at ``path`` cannot be read, and what to do about it."""
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save the file as UTF-8"
        )
    if isinstance(exc, RecursionError):
        return f"{path}: nested too deeply to read (hundreds of levels); flatten it"
    mark = getattr(exc, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    return f"{path}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}"


def parse_rules(text: str, path: str = "<rules>") -> Rules:
    """Validate rules given as YAML text; ``path`` names the source in error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        msg = f"rules file {unreadable_yaml(path, exc)}"
        raise ConfigError(msg) from None
    checker = _Checker(path)
    rules = checker.rules(root)
    if checker.problems:
        listing = "\n  ".join(checker.problems)
        msg = f"rules file {path} has {len(checker.problems)} problem(s):\n  {listing}"
        raise ConfigError(msg)
    return rules


@dataclass
class _Checker:
    """Walks the YAML node tree, collecting problems with their line numbers."""

    path: str
    problems: list[str] = field(default_factory=list)
    uses: list[ColumnUse] = field(default_factory=list)  # the current table's
    safety_ttl_ms: int = DEFAULT_SAFETY_TTL_MS
    tombstone_ttl_ms: int = DEFAULT_TOMBSTONE_TTL_MS
    format: ValueFormat = ValueFormat.JSON
    values: Values = Values.WIRE
    values_chosen: bool = False
    rendering: Rendering = field(default_factory=Rendering)
    implicit_wire: list[str] = field(default_factory=list)

    def problem(self, node: yaml.Node | None, where: str, what: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.path}:{line}: {where}: {what}")

    def mapping(
        self, node: yaml.Node | None, where: str, allowed: frozenset[str]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if node is None:
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, "expected a mapping")
            return {}
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problem(key_node, where, "keys must be plain strings")
            elif key in items:
                self.problem(key_node, where, f"'{key}' is given twice")
            elif allowed and key not in allowed:
                known = ", ".join(sorted(allowed))
                self.problem(key_node, where, f"unknown setting '{key}'; expected one of: {known}")
            else:
                items[key] = (key_node, value_node)
        return items

    def scalar(self, node: yaml.Node, where: str) -> str | None:
        if isinstance(node, yaml.ScalarNode):
            return str(node.value)
        self.problem(node, where, "expected a single value")
        return None

    def names(self, node: yaml.Node, where: str, use: Use | None = None) -> tuple[str, ...] | None:
        """A list of column names; with ``use``, each is recorded with its own line."""
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, where, "expected a list of column names, e.g. [id, name]")
            return None
        out: list[str] = []
        for item in node.value:
            value = self.scalar(item, where)
            if value is not None and not _IDENTIFIER.match(value):
                self.problem(item, where, f"'{value}' is not a column name")
            elif value is not None:
                out.append(value)
                if use is not None:
                    self.used(value, use, where, item)
        return tuple(out)

    def used(self, column: str, use: Use, where: str, node: yaml.Node) -> None:
        self.uses.append(ColumnUse(column, use, where, node.start_mark.line + 1))

    def duration(self, node: yaml.Node | None, where: str, default: int) -> int:
        if node is None:
            return default
        value = self.scalar(node, where)
        if value is None:
            return default
        try:
            return parse_duration_ms(int(value) if value.isdigit() else value)
        except ValueError as exc:
            self.problem(node, where, str(exc))
            return default

    def choice(self, node: yaml.Node | None, where: str, kind: type[_E], default: _E) -> _E:
        if node is None:
            return default
        value = self.scalar(node, where)
        if value is None:
            return default
        try:
            return kind(value)
        except ValueError:
            options = " or ".join(e.value for e in kind)
            self.problem(node, where, f"'{value}' is not valid; use {options}")
            return default

    def rules(self, root: yaml.Node | None) -> Rules:
        if root is None:
            self.problem(None, "rules", "the file is empty; it needs a 'tables:' mapping")
            return Rules({}, self.path)
        top = self.mapping(root, "rules", frozenset({"version", "defaults", "tables"}))
        version = self.version(_value(top, "version"))
        defaults = self.mapping(
            _value(top, "defaults"),
            "defaults",
            frozenset(
                {"safety_ttl", "tombstone_ttl", "format", "values", "decimals", "timestamps"}
            ),
        )
        self.values_chosen = "values" in defaults or version != 1
        self.values = self.choice(
            _value(defaults, "values"), "defaults.values", Values, VERSION_VALUES[version]
        )
        self.rendering = Rendering(
            self.choice(
                _value(defaults, "decimals"), "defaults.decimals", Decimals, Decimals.STRING
            ),
            self.choice(
                _value(defaults, "timestamps"), "defaults.timestamps", Timestamps, Timestamps.ISO
            ),
        )
        self.safety_ttl_ms = self.duration(
            _value(defaults, "safety_ttl"), "defaults.safety_ttl", DEFAULT_SAFETY_TTL_MS
        )
        self.tombstone_ttl_ms = self.duration(
            _value(defaults, "tombstone_ttl"), "defaults.tombstone_ttl", DEFAULT_TOMBSTONE_TTL_MS
        )
        self.format = self.choice(
            _value(defaults, "format"), "defaults.format", ValueFormat, ValueFormat.JSON
        )
        if "tables" not in top:
            self.problem(root, "rules", "missing 'tables:'; map each <db>.<table> to its keys")
        tables_node = _value(top, "tables")
        tables: dict[str, TableRules] = {}
        for name, (name_node, table_node) in self.mapping(
            tables_node, "tables", frozenset()
        ).items():
            where = f"tables.{name}"
            if not _TABLE_NAME.match(name):
                self.problem(
                    name_node,
                    where,
                    "table names are '<database>.<table>' (MySQL) or "
                    "'<schema>.<table>' (PostgreSQL)",
                )
                continue
            table = self.table(name, table_node, where)
            if table is not None:
                tables[name] = table
        if tables_node is not None and not tables and not self.problems:
            self.problem(tables_node, "tables", "no tables are covered")
        return Rules(
            tables,
            self.path,
            self.safety_ttl_ms,
            self.tombstone_ttl_ms,
            tuple(self.implicit_wire),
        )

    def version(self, node: yaml.Node | None) -> int:
        if node is None:
            return 1
        value = self.scalar(node, "version")
        if value is None or not value.isdigit() or int(value) not in RULES_VERSIONS:
            self.problem(
                node,
                "version",
                f"{value!r} is not a rules version; use 1 (values as Debezium ships them) "
                "or 2 (values decoded into the application's shape)",
            )
            return 1
        return int(value)

    def table(
        self,
        name: str,
        node: yaml.Node,
        where: str,
    ) -> TableRules | None:
        items = self.mapping(
            node,
            where,
            frozenset(
                {
                    "columns", "watch", "keys", "tombstone_ttl", "sensitive", "notify",
                    "values", "decimals", "timestamps", "types", "render",
                }
            ),
        )  # fmt: skip
        self.uses = []
        columns_node = _value(items, "columns")
        columns = (
            self.names(columns_node, f"{where}.columns", Use.COLUMNS) if columns_node else None
        )
        known = frozenset(columns) if columns is not None else None

        def check_columns(node: yaml.Node, at: str, used: tuple[str, ...]) -> None:
            if known is None:
                return
            for column in used:
                if column not in known:
                    self.problem(
                        node,
                        at,
                        f"column '{column}' is not a column of {name} "
                        f"(columns: {', '.join(sorted(known))}); fix the name or "
                        "add it to columns",
                    )

        sensitive_node = _value(items, "sensitive")
        sensitive = (
            self.names(sensitive_node, f"{where}.sensitive", Use.SENSITIVE)
            if sensitive_node
            else None
        )
        if sensitive_node is not None and sensitive is not None:
            check_columns(sensitive_node, f"{where}.sensitive", sensitive)
        watch_node = _value(items, "watch")
        watch = self.names(watch_node, f"{where}.watch", Use.WATCH) if watch_node else None
        if watch_node is not None and watch is not None:
            check_columns(watch_node, f"{where}.watch", watch)
        keys_node = _value(items, "keys")
        if not isinstance(keys_node, yaml.SequenceNode) or not keys_node.value:
            self.problem(
                keys_node or node, f"{where}.keys", "each table needs a non-empty list of keys"
            )
            return None
        rules: list[KeyRule] = []
        for index, key_node in enumerate(keys_node.value):
            rule = self.key_rule(key_node, f"{where}.keys[{index}]", check_columns)
            if rule is None:
                continue
            if watch is not None and rule.action is Action.SET and rule.fields is None:
                self.problem(
                    key_node,
                    f"{where}.keys[{index}]",
                    "this key caches the whole row but the table has a watch list, so a "
                    "change to an unwatched column would leave it stale; list its fields",
                )
            else:
                needed = rule.template.columns + (rule.fields or ())
                self.check_watched(key_node, f"{where}.keys[{index}]", needed, watch, "key")
            rules.append(rule)
        tombstone_ttl = self.duration(
            _value(items, "tombstone_ttl"), f"{where}.tombstone_ttl", self.tombstone_ttl_ms
        )
        notify_node = _value(items, "notify")
        notify = None
        if notify_node is not None:
            notify = self.notify_rule(notify_node, f"{where}.notify", check_columns)
            if notify is not None:
                needed = notify.channel.columns + (notify.fields or ())
                self.check_watched(notify_node, f"{where}.notify", needed, watch, "notification")
        values = self.table_values(name, items, where, check_columns)
        return TableRules(
            name,
            tuple(rules),
            frozenset(watch) if watch is not None else None,
            tombstone_ttl,
            frozenset(sensitive or ()),
            notify,
            tuple(self.uses),
            values,
        )

    def table_values(
        self,
        name: str,
        items: Mapping[str, tuple[yaml.Node, yaml.Node]],
        where: str,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> TableValues:
        """How the table's values are cached: decoded or not, declared types, choices."""
        values = self.choice(_value(items, "values"), f"{where}.values", Values, self.values)
        if "values" not in items and not self.values_chosen:
            self.implicit_wire.append(name)
        rendering = Rendering(
            self.choice(
                _value(items, "decimals"), f"{where}.decimals", Decimals, self.rendering.decimals
            ),
            self.choice(
                _value(items, "timestamps"),
                f"{where}.timestamps",
                Timestamps,
                self.rendering.timestamps,
            ),
        )
        types = self.column_types(_value(items, "types"), f"{where}.types", check_columns)
        render = self.render(_value(items, "render"), f"{where}.render", types, rendering)
        render = {column: chosen for column, chosen in render.items() if chosen != rendering}
        if values is Values.WIRE:
            for setting in ("decimals", "timestamps", "types", "render"):
                if setting in items:
                    self.problem(
                        items[setting][0],
                        f"{where}.{setting}",
                        "applies only to decoded values, but this table's values are cached "
                        "as Debezium ships them; set values: natural (or rules version: 2)",
                    )
            return WIRE_VALUES
        return TableValues(True, types, rendering, render)

    def column_types(
        self,
        node: yaml.Node | None,
        where: str,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> dict[str, ColumnType]:
        out: dict[str, ColumnType] = {}
        for column, (key_node, value_node) in self.mapping(node, where, frozenset()).items():
            check_columns(key_node, where, (column,))
            self.used(column, Use.TYPES, where, key_node)
            text = self.scalar(value_node, f"{where}.{column}")
            if text is None:
                continue
            try:
                out[column] = declared(text)
            except ValueError as exc:
                self.problem(value_node, f"{where}.{column}", str(exc))
        return out

    def render(
        self,
        node: yaml.Node | None,
        where: str,
        types: Mapping[str, ColumnType],
        rendering: Rendering,
    ) -> dict[str, Rendering]:
        out: dict[str, Rendering] = {}
        for column, (key_node, value_node) in self.mapping(node, where, frozenset()).items():
            self.used(column, Use.RENDER, where, key_node)
            choice = self.scalar(value_node, f"{where}.{column}")
            if choice is None:
                continue
            if choice not in RENDER_CHOICES:
                self.problem(
                    value_node,
                    f"{where}.{column}",
                    f"'{choice}' is not valid; use {', '.join(RENDER_CHOICES)}",
                )
                continue
            kind = types[column].kind if column in types else None
            if kind is not None and not _fits(choice, kind):
                self.problem(
                    value_node,
                    f"{where}.{column}",
                    f"'{choice}' does not apply to a column of type {types[column]}",
                )
                continue
            out[column] = rendering.choose(choice)
        return out

    def check_watched(
        self, node: yaml.Node, where: str, used: tuple[str, ...], watch: tuple[str, ...] | None,
        what: str,
    ) -> None:  # fmt: skip
        """Every column a key or a notification reads must be watched, or it goes stale."""
        for column in used:
            if watch is not None and column not in watch:
                self.problem(
                    node,
                    where,
                    f"column '{column}' is used by this {what} but not watched, so changes "
                    f"to it would {'leave the cache stale' if what == 'key' else 'be missed'}; "
                    "add it to watch",
                )

    def notify_rule(
        self,
        node: yaml.Node,
        where: str,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> NotifyRule | None:
        items = self.mapping(node, where, frozenset({"channel", "fields", "maxlen"}))
        if "channel" not in items:
            if isinstance(node, yaml.MappingNode):
                self.problem(
                    node, where, "missing 'channel:', e.g. channel: \"inventory:{warehouse}\""
                )
            return None
        channel_node = items["channel"][1]
        source = self.scalar(channel_node, f"{where}.channel")
        if source is None:
            return None
        try:
            channel = KeyTemplate.parse(source, constant_ok=True)
        except ValueError as exc:
            self.problem(channel_node, f"{where}.channel", f"{exc} in '{source}'")
            return None
        if not channel.static_prefix or "*" in source:
            self.problem(
                channel_node,
                f"{where}.channel",
                f"'{source}' must start with a literal name such as 'inventory:' and hold "
                "no '*' (clients subscribe with '*' patterns)",
            )
        check_columns(channel_node, f"{where}.channel", channel.columns)
        for column in channel.columns:
            self.used(column, Use.CHANNEL, f"{where}.channel", channel_node)
        fields_node = _value(items, "fields")
        fields = (
            self.names(fields_node, f"{where}.fields", Use.NOTIFY_FIELDS) if fields_node else None
        )
        if fields_node is not None and fields is not None:
            check_columns(fields_node, f"{where}.fields", fields)
        maxlen = self.count(_value(items, "maxlen"), f"{where}.maxlen", DEFAULT_NOTIFY_MAXLEN)
        return NotifyRule(channel, fields, maxlen, node.start_mark.line + 1)

    def count(self, node: yaml.Node | None, where: str, default: int) -> int:
        if node is None:
            return default
        value = self.scalar(node, where)
        if value is None:
            return default
        if not value.isdigit() or int(value) <= 0:
            self.problem(node, where, f"'{value}' is not a positive whole number")
            return default
        return int(value)

    def key_rule(
        self,
        node: yaml.Node,
        where: str,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> KeyRule | None:
        items = self.mapping(node, where, frozenset({"key", "action", "fields", "format", "ttl"}))
        if "key" not in items:
            self.problem(node, where, "missing 'key:', e.g. key: \"stock:{sku_id}\"")
            return None
        key_node = items["key"][1]
        source = self.scalar(key_node, f"{where}.key")
        if source is None:
            return None
        try:
            template = KeyTemplate.parse(source)
        except ValueError as exc:
            self.problem(key_node, f"{where}.key", f"{exc} in '{source}'")
            return None
        prefix = template.static_prefix
        if not prefix:
            self.problem(
                key_node,
                f"{where}.key",
                f"'{source}' starts with a placeholder; start it with a literal prefix "
                "such as 'stock:' so a TRUNCATE can find its keys",
            )
        elif any(
            prefix.startswith(own) or own.startswith(prefix)
            for own in (VERSION_PREFIX, LEGACY_VERSION_PREFIX)
        ):
            self.problem(
                key_node,
                f"{where}.key",
                f"prefix '{prefix}' overlaps cdc-cache's version keys "
                f"('{VERSION_PREFIX}', '{LEGACY_VERSION_PREFIX}'); choose another prefix",
            )
        check_columns(key_node, f"{where}.key", template.columns)
        for column in template.columns:
            self.used(column, Use.KEY, f"{where}.key", key_node)
        action = self.choice(_value(items, "action"), f"{where}.action", Action, Action.SET)
        fields_node = _value(items, "fields")
        fields = self.names(fields_node, f"{where}.fields", Use.FIELDS) if fields_node else None
        if fields_node is not None and fields is not None:
            check_columns(fields_node, f"{where}.fields", fields)
            if action is Action.DELETE:
                self.problem(
                    fields_node,
                    f"{where}.fields",
                    "a delete key stores no value; remove fields or use action: set",
                )
        value_format = self.choice(
            _value(items, "format"), f"{where}.format", ValueFormat, self.format
        )
        ttl = self.duration(_value(items, "ttl"), f"{where}.ttl", self.safety_ttl_ms)
        return KeyRule(template, action, fields, value_format, ttl, node.start_mark.line + 1)


def _fits(choice: str, kind: Kind) -> bool:
    """Whether a rendering choice means something for a column of ``kind``."""
    if choice in (Decimals.STRING, Decimals.NUMBER):
        return kind in _DECIMAL_KINDS
    if choice in (Timestamps.ISO, Timestamps.EPOCH_MS):
        return kind in _TIMESTAMP_KINDS
    return True


def _value(items: Mapping[str, tuple[yaml.Node, yaml.Node]], key: str) -> yaml.Node | None:
    pair = items.get(key)
    return pair[1] if pair is not None else None
