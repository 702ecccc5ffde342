"""The rules file read and validated: every problem with its file and line, at startup.

Loading checks everything a change would later need, so a bad file stops startup with
``file:line: where: what is wrong; how to fix`` for every problem found, never at the first
event.

Kept in one module: one validator walks the YAML node tree once, and its checks share
that walk's state (the file's defaults, the columns each rule of a table uses).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Final, TypeVar

import yaml

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.identity import TableIdentity, split
from cdc_cache.core.keys import ns
from cdc_cache.core.logical import ColumnType, Kind, declared
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.expressions import Expression
from cdc_cache.plan.key_extras import Field, KeyExtras, RowTtl, Snapshot
from cdc_cache.plan.rules import (
    DEFAULT_NOTIFY_MAXLEN,
    DEFAULT_SAFETY_TTL_MS,
    DEFAULT_TOMBSTONE_TTL_MS,
    IDENTIFIER,
    Action,
    ColumnUse,
    Dependency,
    KeyRule,
    KeyTemplate,
    LinkRule,
    NotifyRule,
    Rules,
    TableRules,
    Use,
    check_tag,
)
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
_SERVER_TABLE_NAME: Final = re.compile(r"^[^.\s]+(\.[^.\s]+)*\.[^.\s]+\.[^.\s]+$")

_E = TypeVar("_E", bound=StrEnum)

# The settings each level of the file takes (the JSON Schema is generated from these too,
# see cdc_cache.plan.rules_schema).
TOP_SETTINGS: Final = frozenset({"version", "defaults", "tables"})
DEFAULTS_SETTINGS: Final = frozenset(
    {"safety_ttl", "tombstone_ttl", "format", "values", "decimals", "timestamps"}
)
TABLE_SETTINGS: Final = frozenset(
    {
        "columns", "watch", "keys", "tombstone_ttl", "sensitive", "notify",
        "values", "decimals", "timestamps", "types", "render", "invalidate_tags", "snapshot",
    }
)  # fmt: skip
KEY_SETTINGS: Final = frozenset(
    {
        "key", "action", "fields", "format", "ttl", "depends_on", "when", "only_if_cached",
        "member", "score",
    }
)  # fmt: skip
NOTIFY_SETTINGS: Final = frozenset({"channel", "fields", "maxlen"})
DEPENDENCY_SETTINGS: Final = frozenset({"table", "via", "through", "match"})
FIELD_SETTINGS: Final = frozenset({"name", "from", "expr"})
ROW_TTL_SETTINGS: Final = frozenset({"seconds", "until"})

RULES_VERSIONS: Final = (1, 2)
# What a rules file caches when it does not choose: version 1 keeps Debezium's wire values.
VERSION_VALUES: Final = {1: Values.WIRE, 2: Values.NATURAL}
_TIMESTAMP_KINDS: Final = frozenset(
    {Kind.TIMESTAMP_MS, Kind.TIMESTAMP_US, Kind.TIMESTAMP_NS, Kind.ZONED_TIMESTAMP}
)
_DECIMAL_KINDS: Final = frozenset({Kind.DECIMAL, Kind.VARIABLE_DECIMAL})


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


def load_rules(path: str | Path, identity: TableIdentity = TableIdentity.DB_TABLE) -> Rules:
    """Read and validate a rules file; raises ConfigError listing every problem.

    ``identity`` is the ``table_identity`` setting: how the file must name its tables.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read rules file {path}: {exc.strerror}; pass an existing file with --rules"
        raise ConfigError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"rules file {unreadable_yaml(str(path), exc)}"
        raise ConfigError(msg) from None
    return parse_rules(text, str(path), identity)


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


def parse_rules(
    text: str, path: str = "<rules>", identity: TableIdentity = TableIdentity.DB_TABLE
) -> Rules:
    """Validate rules given as YAML text; ``path`` names the source in error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        msg = f"rules file {unreadable_yaml(path, exc)}"
        raise ConfigError(msg) from None
    checker = _Checker(path, identity)
    rules = checker.rules(root)
    if checker.problems:
        listing = "\n  ".join(checker.problems)
        msg = f"rules file {path} has {len(checker.problems)} problem(s):\n  {listing}"
        raise RulesInvalid(msg, tuple(checker.problems))
    return rules


class RulesInvalid(ConfigError):
    """A rules file that reads as YAML but breaks the rules: ``problems``, one line each."""

    def __init__(self, message: str, problems: tuple[str, ...]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass
class _Checker:
    """Walks the YAML node tree, collecting problems with their line numbers."""

    path: str
    identity: TableIdentity = TableIdentity.DB_TABLE
    problems: list[str] = field(default_factory=list)
    uses: list[ColumnUse] = field(default_factory=list)  # the current table's
    safety_ttl_ms: int = DEFAULT_SAFETY_TTL_MS
    tombstone_ttl_ms: int = DEFAULT_TOMBSTONE_TTL_MS
    format: ValueFormat = ValueFormat.JSON
    values: Values = Values.WIRE
    values_chosen: bool = False
    rendering: Rendering = field(default_factory=Rendering)
    implicit_wire: list[str] = field(default_factory=list)
    # per table: its declared columns and watch list (None: not declared), for dependencies
    declared: dict[str, tuple[frozenset[str] | None, frozenset[str] | None]] = field(
        default_factory=dict
    )
    keyless: dict[str, yaml.Node] = field(default_factory=dict)  # tables without keys

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
            if value is not None and not IDENTIFIER.match(value):
                self.problem(item, where, f"'{value}' is not a column name")
            elif value is not None:
                out.append(value)
                if use is not None:
                    self.used(value, use, where, item)
        return tuple(out)

    def used(self, column: str, use: Use, where: str, node: yaml.Node) -> None:
        self.uses.append(ColumnUse(column, use, where, node.start_mark.line + 1))

    def optional_scalar(self, node: yaml.Node | None, where: str) -> str | None:
        """A setting's text, or None when it is absent or empty (its default applies)."""
        return None if node is None else self.scalar(node, where)

    def duration(self, node: yaml.Node | None, where: str, default: int) -> int:
        value = self.optional_scalar(node, where)
        if value is None:
            return default
        try:
            return parse_duration_ms(int(value) if value.isdigit() else value)
        except ValueError as exc:
            self.problem(node, where, str(exc))
            return default

    def choice(self, node: yaml.Node | None, where: str, kind: type[_E], default: _E) -> _E:
        value = self.optional_scalar(node, where)
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
        top = self.mapping(root, "rules", TOP_SETTINGS)
        version = self.version(_value(top, "version"))
        defaults = self.mapping(_value(top, "defaults"), "defaults", DEFAULTS_SETTINGS)
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
            if not self.table_name(name, name_node, where):
                continue
            table = self.table(name, table_node, where)
            if table is not None:
                tables[name] = replace(table, line=name_node.start_mark.line + 1)
        if tables_node is not None and not tables and not self.problems:
            self.problem(tables_node, "tables", "no tables are covered")
        links, dependents = self.dependencies(tables)
        if self.identity is TableIdentity.SERVER_DB_TABLE:
            self.servers_apart(tables)
        return Rules(
            tables,
            self.path,
            self.safety_ttl_ms,
            self.tombstone_ttl_ms,
            tuple(self.implicit_wire),
            links,
            dependents,
            self.identity,
        )

    def table_name(self, name: str, node: yaml.Node, where: str) -> bool:
        """Whether ``name`` names a table as the ``table_identity`` setting says."""
        if self.identity is TableIdentity.SERVER_DB_TABLE:
            if _SERVER_TABLE_NAME.match(name):
                return True
            what = (
                f"table_identity is server_db_table, so changes name this table "
                f"'<server>.{name}' (the connector's topic.prefix first, e.g. 'shard1.{name}'); "
                "name it so, or set table_identity: db_table"
                if _TABLE_NAME.match(name)
                else f"table names are '{self.identity.parts}' (table_identity: server_db_table)"
            )
        elif _TABLE_NAME.match(name):
            return True
        elif _SERVER_TABLE_NAME.match(name):
            server, table = split(name)
            what = (
                f"names a server ('{server}'), but table_identity is db_table, so changes "
                f"name this table '{table}': set table_identity: server_db_table to keep "
                f"sources apart by server, or name it '{table}'"
            )
        else:
            what = "table names are '<database>.<table>' (MySQL) or '<schema>.<table>' (PostgreSQL)"
        self.problem(node, where, what)
        return False

    def servers_apart(self, tables: Mapping[str, TableRules]) -> None:
        """Each server's keys begin with a literal prefix no other server's keys begin with.

        Positions of two sources are not comparable: a key written from two servers would
        be version-gated across them (a change of one server judged stale against the
        other's position), and a TRUNCATE of one server's table would sweep the other's
        keys under their shared prefix. Literal prefixes that are not prefixes of each
        other keep every key and every sweep to one server.
        """
        seen: list[tuple[str, str, str, int]] = []  # (server, prefix, table, line)
        for name, table in tables.items():
            server = split(name)[0]
            for rule in table.keys:
                prefix = rule.template.static_prefix
                for other, known, where, line in seen:
                    if other != server and (prefix.startswith(known) or known.startswith(prefix)):
                        self.problems.append(
                            f"{self.path}:{rule.line}: tables.{name}: key "
                            f"'{rule.template.source}' may name the same keys as "
                            f"{where}'s (line {line}) of server '{other}': positions of "
                            "two servers are not comparable, so start each server's keys "
                            f"with its own literal prefix, e.g. '{server}:{rule.template.source}'"
                        )
                        break
                seen.append((server or "", prefix, name, rule.line))

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
        items = self.mapping(node, where, TABLE_SETTINGS)
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
        self.declared[name] = (
            known, frozenset(watch) if watch_node is not None and watch is not None else None
        )  # fmt: skip
        tags = self.tag_templates(
            _value(items, "invalidate_tags"), f"{where}.invalidate_tags", check_columns, watch
        )
        keys_node = _value(items, "keys")
        if keys_node is None or (isinstance(keys_node, yaml.SequenceNode) and not keys_node.value):
            self.keyless[name] = keys_node or node  # fine for a parent or a join table
        elif not isinstance(keys_node, yaml.SequenceNode):
            self.problem(keys_node, f"{where}.keys", "each table needs a non-empty list of keys")
            return None
        rules: list[KeyRule] = []
        for index, key_node in enumerate(keys_node.value if keys_node is not None else ()):
            rule = self.key_rule(key_node, f"{where}.keys[{index}]", check_columns, watch)
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
                needed = rule.template.columns + (rule.fields or ()) + _extra_columns(rule)
                if rule.member is not None:  # an index: its member and score too
                    needed += rule.member.columns + ((rule.score,) if rule.score else ())
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
        snapshot = self.choice(
            _value(items, "snapshot"), f"{where}.snapshot", Snapshot, Snapshot.WRITE
        )
        self.check_scores(values)
        return TableRules(
            name,
            tuple(rules),
            frozenset(watch) if watch is not None else None,
            tombstone_ttl,
            frozenset(sensitive or ()),
            notify,
            tuple(self.uses),
            values,
            tags,
            snapshot,
        )

    def tag_templates(
        self,
        node: yaml.Node | None,
        where: str,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
        watch: tuple[str, ...] | None,
    ) -> tuple[KeyTemplate, ...]:
        """``invalidate_tags``: tags every change of the table invalidates (before and after)."""
        if node is None:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, where, 'expected a list of tags, e.g. ["brand:{brand_id}"]')
            return ()
        out: list[KeyTemplate] = []
        for index, item in enumerate(node.value):
            at = f"{where}[{index}]"
            source = self.scalar(item, at)
            if source is None:
                continue
            try:
                template = KeyTemplate.parse(source, constant_ok=True)
                check_tag(template.static_prefix or "x", what="tag template")
            except ValueError as exc:
                self.problem(item, at, f"{exc} in '{source}'")
                continue
            check_columns(item, at, template.columns)
            for column in template.columns:
                self.used(column, Use.TAGS, at, item)
            self.check_watched(item, at, template.columns, watch, "tag")
            out.append(template)
        return tuple(out)

    def dependency(
        self,
        node: yaml.Node,
        where: str,
        template: KeyTemplate,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
        watch: tuple[str, ...] | None,
    ) -> Dependency | None:
        """One ``depends_on`` entry; what it says of other tables is checked once all are read."""
        items = self.mapping(node, where, DEPENDENCY_SETTINGS)
        if "table" not in items or "via" not in items:
            if isinstance(node, yaml.MappingNode):
                self.problem(
                    node,
                    where,
                    "needs 'table:' (the table whose rows the key shows) and 'via:' (the "
                    "column holding that row's primary key), e.g. "
                    "{table: catalog.brands, via: brand_id}",
                )
            return None
        parent = self.scalar(items["table"][1], f"{where}.table")
        via = self.scalar(items["via"][1], f"{where}.via")
        through_node = _value(items, "through")
        through = self.optional_scalar(through_node, f"{where}.through")
        if parent is None or via is None or (through_node is not None and through is None):
            return None
        if not IDENTIFIER.match(via):
            self.problem(items["via"][1], f"{where}.via", f"'{via}' is not a column name")
            return None
        match: dict[str, str] = {}
        match_node = _value(items, "match")
        for column, (_, value_node) in self.mapping(
            match_node, f"{where}.match", frozenset()
        ).items():
            target = self.scalar(value_node, f"{where}.match.{column}")
            if target is not None and IDENTIFIER.match(target):
                match[column] = target
            elif target is not None:
                self.problem(value_node, f"{where}.match.{column}", f"'{target}' is not a column")
        if through is None:
            if match_node is not None:
                self.problem(
                    match_node,
                    f"{where}.match",
                    "match applies to a join table only; remove it or add through:",
                )
            check_columns(items["via"][1], f"{where}.via", (via,))
            self.used(via, Use.DEPENDS, f"{where}.via", items["via"][1])
            self.check_watched(items["via"][1], f"{where}.via", (via,), watch, "dependency")
        else:
            check_columns(match_node or node, f"{where}.match", tuple(match))
            missing = [c for c in template.columns if c not in match]
            if missing:
                pairs = ", ".join(f"{c}: <join column>" for c in missing)
                self.problem(
                    match_node or node,
                    f"{where}.match",
                    f"the join table's rows must give every column of '{template.source}'; "
                    f"add {{{pairs}}}",
                )
                return None
        return Dependency(parent, via, through, tuple(match.items()), node.start_mark.line + 1)

    def dependencies(
        self, tables: Mapping[str, TableRules]
    ) -> tuple[dict[str, tuple[LinkRule, ...]], dict[str, tuple[KeyTemplate, ...]]]:
        """Check every dependency against the tables it names; the link rules they give.

        Returns, per table, how its rows link dependent keys to parents, and, per parent
        table, the key templates that depend on it.
        """
        links: dict[str, list[LinkRule]] = {}
        dependents: dict[str, list[KeyTemplate]] = {}
        edges: dict[str, dict[str, int]] = {}
        for name, table in tables.items():
            for index, rule in enumerate(table.keys):
                for number, dep in enumerate(rule.depends_on):
                    where = f"tables.{name}.keys[{index}].depends_on[{number}]"
                    if not self.dependency_tables(dep, where):
                        continue
                    source = dep.through or name
                    columns = dep.match or tuple((c, c) for c in rule.template.columns)
                    links.setdefault(source, []).append(
                        LinkRule(rule.template, columns, dep.parent, dep.via, source != name)
                    )
                    dependents.setdefault(dep.parent, []).append(rule.template)
                    if dep.parent != name:  # a tree in one table (parent_id) is no cycle
                        edges.setdefault(name, {}).setdefault(dep.parent, dep.line)
        for name, node in self.keyless.items():
            named = name in links or name in dependents or bool(tables[name].invalidate_tags)
            if name in tables and not named:
                self.problem(
                    node,
                    f"tables.{name}.keys",
                    "each table needs a non-empty list of keys, unless other keys depend on "
                    "its rows (depends_on) or it invalidates tags (invalidate_tags)",
                )
        self.cycles(edges)
        return (
            {t: tuple(rules) for t, rules in links.items()},
            {t: tuple(dict.fromkeys(keys)) for t, keys in dependents.items()},
        )

    def dependency_tables(self, dep: Dependency, where: str) -> bool:
        """Whether the tables ``dep`` names are covered and give the columns it reads."""
        ok = True
        for table, what in ((dep.parent, "table"), (dep.through, "through")):
            if table is not None and table not in self.declared:
                self.problems.append(
                    f"{self.path}:{dep.line}: {where}.{what}: unknown table '{table}'; add it "
                    "under tables: (with watch: listing the columns the key shows), so its "
                    "changes are read"
                )
                ok = False
        if not ok or dep.through is None:
            return ok
        columns, watch = self.declared[dep.through]
        for column in (dep.via, *(c for _, c in dep.match)):
            if columns is not None and column not in columns:
                self.problems.append(
                    f"{self.path}:{dep.line}: {where}: column '{column}' is not a column of "
                    f"{dep.through}; fix the name or add it to its columns"
                )
                ok = False
            elif watch is not None and column not in watch:
                self.problems.append(
                    f"{self.path}:{dep.line}: {where}: column '{column}' of {dep.through} "
                    "links keys to their parents but is not watched, so a changed link "
                    f"would be missed; add it to tables.{dep.through}.watch"
                )
                ok = False
        return ok

    def cycles(self, edges: Mapping[str, Mapping[str, int]]) -> None:
        """Refuse dependencies that lead back to the table they start from."""
        done: set[str] = set()

        def visit(table: str, path: list[str]) -> None:
            if table in path:
                cycle = [*path[path.index(table) :], table]
                line = edges[path[-1]][table]
                self.problems.append(
                    f"{self.path}:{line}: depends_on: the dependencies form a cycle "
                    f"({' -> '.join(cycle)}); a change invalidates only the keys that name "
                    "its table, never keys that depend on those keys, so a cycle says a key "
                    "shows data through itself: keep the depends_on of the table whose keys "
                    "show the other's rows and remove the one that closes the cycle"
                )
                return
            if table in done:
                return
            for parent in edges.get(table, {}):
                visit(parent, [*path, table])
            done.add(table)

        for table in sorted(edges):
            visit(table, [])

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
        items = self.mapping(node, where, NOTIFY_SETTINGS)
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
        value = self.optional_scalar(node, where)
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
        watch: tuple[str, ...] | None,
    ) -> KeyRule | None:
        items = self.mapping(node, where, KEY_SETTINGS)
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
            for own in (ns().version_prefix, ns().legacy_version_prefix)
        ):
            self.problem(
                key_node,
                f"{where}.key",
                f"prefix '{prefix}' overlaps cdc-cache's version keys "
                f"('{ns().version_prefix}', '{ns().legacy_version_prefix}'); choose another prefix",
            )
        check_columns(key_node, f"{where}.key", template.columns)
        for column in template.columns:
            self.used(column, Use.KEY, f"{where}.key", key_node)
        action = self.choice(_value(items, "action"), f"{where}.action", Action, Action.SET)
        fields_node = _value(items, "fields")
        fields, projection = (
            self.fields(fields_node, f"{where}.fields", check_columns)
            if fields_node
            else (None, None)
        )
        if fields_node is not None and fields is not None and action is Action.DELETE:
            self.problem(
                fields_node,
                f"{where}.fields",
                "a delete key stores no value; remove fields or use action: set",
            )
        elif fields_node is not None and fields is not None and action.indexes:
            self.problem(
                fields_node,
                f"{where}.fields",
                "an index key holds one member per row, not its fields; remove fields "
                "(the member is 'member:', a sorted set's score 'score:')",
            )
        member, score = self.index_member(items, node, where, action, check_columns)
        value_format = self.choice(
            _value(items, "format"), f"{where}.format", ValueFormat, self.format
        )
        ttl_node = _value(items, "ttl")
        row_ttl = None
        if isinstance(ttl_node, yaml.MappingNode):
            ttl, row_ttl = self.safety_ttl_ms, self.row_ttl(ttl_node, f"{where}.ttl", check_columns)
        else:
            ttl = self.duration(ttl_node, f"{where}.ttl", self.safety_ttl_ms)
        extras = self.key_extras(
            items, where, action, check_columns, projection=projection, row_ttl=row_ttl
        )
        depends: list[Dependency] = []
        depends_node = _value(items, "depends_on")
        if depends_node is not None and not isinstance(depends_node, yaml.SequenceNode):
            self.problem(depends_node, f"{where}.depends_on", "expected a list of dependencies")
        elif depends_node is not None:
            if action is not Action.DELETE:
                self.problem(
                    depends_node,
                    f"{where}.depends_on",
                    "a key that shows other tables' rows holds what only the application "
                    "computes, so the worker can only delete it: use action: delete and fill "
                    "it through CacheAside",
                )
            for number, dep_node in enumerate(depends_node.value):
                dep = self.dependency(
                    dep_node, f"{where}.depends_on[{number}]", template, check_columns, watch
                )
                if dep is not None:
                    depends.append(dep)
        return KeyRule(
            template,
            action,
            fields,
            value_format,
            ttl,
            node.start_mark.line + 1,
            tuple(depends),
            member,
            score,
            extras,
        )

    def fields(
        self,
        node: yaml.Node,
        where: str,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> tuple[tuple[str, ...] | None, tuple[Field, ...] | None]:
        """``fields:``: the columns a key's value reads, and its renamed/computed fields.

        A list of plain column names keeps the fast projection (no fields of their own);
        entries ``{name, from}`` or ``{name, expr}`` make one.
        """
        if not isinstance(node, yaml.SequenceNode) or all(
            isinstance(item, yaml.ScalarNode) for item in node.value
        ):
            names = self.names(node, where, Use.FIELDS)
            if names is not None:
                check_columns(node, where, names)
            return names, None
        out: list[Field] = []
        read: list[str] = []
        for index, item in enumerate(node.value):
            at = f"{where}[{index}]"
            if isinstance(item, yaml.ScalarNode):
                column = self.column_name(item, at, check_columns)
                if column is not None:
                    out.append(Field(column, column))
                    read.append(column)
                continue
            entry = self.mapping(item, at, FIELD_SETTINGS)
            name = self.optional_scalar(_value(entry, "name"), f"{at}.name")
            if name is None or not IDENTIFIER.match(name):
                self.problem(item, at, "needs 'name:' (a field name such as title) and one of "
                             "'from:' (a column) or 'expr:' (an expression)")  # fmt: skip
                continue
            if ("from" in entry) == ("expr" in entry):
                self.problem(item, at, "give exactly one of 'from:' (a column) or 'expr:'")
                continue
            if "from" in entry:
                column = self.column_name(entry["from"][1], f"{at}.from", check_columns)
                if column is not None:
                    out.append(Field(name, column))
                    read.append(column)
                continue
            expr = self.expression(entry["expr"][1], f"{at}.expr", Use.FIELDS, check_columns)
            if expr is not None:
                out.append(Field(name, None, expr))
                read += expr.columns
        given = [f.name for f in out]
        for name in sorted({n for n in given if given.count(n) > 1}):
            self.problem(node, where, f"field '{name}' is given twice; rename one")
        return tuple(dict.fromkeys(read)), tuple(out)

    def column_name(
        self,
        node: yaml.Node,
        where: str,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> str | None:
        """One column name of ``fields:``, recorded and checked against the columns."""
        value = self.scalar(node, where)
        if value is None or not IDENTIFIER.match(value):
            self.problem(node, where, f"'{value}' is not a column name")
            return None
        self.used(value, Use.FIELDS, where, node)
        check_columns(node, where, (value,))
        return value

    def expression(
        self,
        node: yaml.Node,
        where: str,
        use: Use,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> Expression | None:
        """An expression over the row's columns, compiled once; its columns recorded."""
        source = self.scalar(node, where)
        if source is None:
            return None
        try:
            expr = Expression.compile(source)
        except ValueError as exc:
            self.problem(node, where, f"{exc}; see the rules section of the README")
            return None
        check_columns(node, where, expr.columns)
        for column in expr.columns:
            if not IDENTIFIER.match(column):  # pragma: no cover - Python names are identifiers
                self.problem(node, where, f"'{column}' is not a column name")
            self.used(column, use, where, node)
        return expr

    def row_ttl(
        self,
        node: yaml.MappingNode,
        where: str,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> RowTtl | None:
        """``ttl: {seconds: EXPR}`` or ``ttl: {until: EXPR}``: a TTL from the row."""
        items = self.mapping(node, where, ROW_TTL_SETTINGS)
        if len(items) != 1:
            if len(items) > 1 or not self.problems:
                self.problem(
                    node,
                    where,
                    "give one of 'seconds:' (an expression for the seconds to live) or "
                    "'until:' (an expression for the time the row expires)",
                )
            return None
        ((setting, (_, value_node)),) = items.items()
        expr = self.expression(value_node, f"{where}.{setting}", Use.TTL, check_columns)
        return RowTtl(expr, setting == "until") if expr is not None else None

    def key_extras(
        self,
        items: Mapping[str, tuple[yaml.Node, yaml.Node]],
        where: str,
        action: Action,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
        *,
        projection: tuple[Field, ...] | None,
        row_ttl: RowTtl | None,
    ) -> KeyExtras | None:
        """A key's filter, refresh-only flag, computed fields and row TTL (None: none)."""
        when_node = _value(items, "when")
        when = (
            self.expression(when_node, f"{where}.when", Use.WHEN, check_columns)
            if when_node is not None
            else None
        )
        only_node = _value(items, "only_if_cached")
        only = self.flag(only_node, f"{where}.only_if_cached")
        if action is not Action.SET:  # a delete key, or an index key (zadd, sadd)
            for setting, given in (("when", when_node), ("only_if_cached", only_node)):
                if given is not None:
                    self.problem(
                        given,
                        f"{where}.{setting}",
                        f"{setting} applies to action: set only (a delete key is deleted by "
                        "every change of the row; an index key holds members, not values)",
                    )
            if row_ttl is not None:
                self.problem(items["ttl"][1], f"{where}.ttl", "a TTL from the row applies to "
                             "action: set only; give a duration")  # fmt: skip
            return None
        if when is None and projection is None and row_ttl is None and not only:
            return None
        return KeyExtras(when, projection, row_ttl, only)

    def flag(self, node: yaml.Node | None, where: str) -> bool:
        value = self.optional_scalar(node, where)
        if value is None:
            return False
        if value.lower() not in ("true", "false"):
            self.problem(node, where, f"'{value}' is not valid; use true or false")
            return False
        return value.lower() == "true"

    def index_member(
        self,
        items: Mapping[str, tuple[yaml.Node, yaml.Node]],
        node: yaml.Node,
        where: str,
        action: Action,
        check_columns: Callable[[yaml.Node, str, tuple[str, ...]], None],
    ) -> tuple[KeyTemplate | None, str | None]:
        """An index key's ``member`` template and ``score`` column (zadd, sadd only)."""
        if not action.indexes:
            for setting in _INDEX_SETTINGS:
                if setting in items:
                    self.problem(
                        items[setting][0],
                        f"{where}.{setting}",
                        f"only an index key (action: zadd or sadd) has a {setting}; "
                        f"remove it or change the action",
                    )
            return None, None
        member_node = _value(items, "member")
        if member_node is None:
            self.problem(
                node,
                where,
                "an index key needs 'member:', the row's member, e.g. member: \"{id}\"",
            )
        member = None
        source = self.optional_scalar(member_node, f"{where}.member")
        if member_node is not None and source is not None:
            try:
                member = KeyTemplate.parse(source)
            except ValueError as exc:
                self.problem(member_node, f"{where}.member", f"{exc} in '{source}'")
            if member is not None:
                check_columns(member_node, f"{where}.member", member.columns)
                for column in member.columns:
                    self.used(column, Use.MEMBER, f"{where}.member", member_node)
        score_node = _value(items, "score")
        score = self.optional_scalar(score_node, f"{where}.score")
        if action is Action.SADD and score_node is not None:
            self.problem(
                score_node,
                f"{where}.score",
                "a set has no scores; remove score or use action: zadd",
            )
            return member, None
        if action is Action.ZADD and score is None:
            self.problem(
                score_node or node,
                where,
                "a sorted set needs 'score:', the numeric column that orders it, e.g. score: price",
            )
        elif score is not None and score_node is not None:
            if not IDENTIFIER.match(score):
                self.problem(score_node, f"{where}.score", f"'{score}' is not a column name")
                return member, None
            check_columns(score_node, f"{where}.score", (score,))
            self.used(score, Use.SCORE, f"{where}.score", score_node)
        return member, score

    def check_scores(self, values: TableValues) -> None:
        """A score column declared of a type that is not cached as a number is refused."""
        for use in self.uses:
            column_type = values.declared.get(use.column) if use.use is Use.SCORE else None
            if column_type is None:
                continue
            rendering = values.columns.get(use.column, values.default)
            epoch = rendering.timestamps is Timestamps.EPOCH_MS and not rendering.wire
            if column_type.kind in _NUMERIC_KINDS or (
                epoch and column_type.kind in _TIMESTAMP_KINDS
            ):
                continue
            self.problems.append(
                f"{self.path}:{use.line}: {use.where}: score column '{use.column}' is declared "
                f"{column_type}, which is not cached as a number; score by a numeric column "
                "(for a timestamp, render it epoch_ms)"
            )


def _extra_columns(rule: KeyRule) -> tuple[str, ...]:
    """The columns a key's filter and row TTL read (its fields are in ``rule.fields``)."""
    extras = rule.extras
    if extras is None:
        return ()
    exprs = (extras.when, extras.ttl.expr if extras.ttl is not None else None)
    return tuple(c for expr in exprs if expr is not None for c in expr.columns)


_INDEX_SETTINGS: Final = ("member", "score")
_NUMERIC_KINDS: Final = frozenset({Kind.DECIMAL, Kind.VARIABLE_DECIMAL, Kind.FLOAT32})


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
