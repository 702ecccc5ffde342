"""DDL awareness: when a table's columns change, check the rules against them at once.

Two things tell the worker a table's columns. Debezium's schema-change records (the
topic named ``<topic.prefix>``, which the worker reads next to the tables' topics) carry
each created or altered table's columns (``tableChanges``); a MySQL connector writes one
at the DDL's place in the binlog, before any row of the new shape. And every row change
carries them: its schema block (JSON with schemas, Avro) declares the row's fields and
each image holds all of them, so the after image's column names are the table's columns
in every message format. The newest source position wins, so a backlog of older rows
read after a DDL (another partition, another topic) does not undo it.

A column the rules name that the table does not have is reported with the rules file and
line, what it breaks and what to change, before the changes of the new shape arrive when
the DDL record comes first: a log line, ``cdc_cache_rules_column_problems{table,breaks}``
(an alert), ``cdc_cache_schema_changes_total{table}``, and, when it breaks the table's
changes, the table falls back to ttl mode (:mod:`cdc_cache.mode.tables`) until its columns
fit the rules again.

The first row change of a table that a process reads is judged the same way: a column it
lacks may be a typo in the rules, or a column a later migration adds (a backlog read
after a restart), and no message can tell which. So it is never a reason to stop: the
change is dead-lettered like every change the rules cannot render (its keys deleted), the
table falls back, and the report names the rules line to fix. Only the rules themselves
are checked at startup; ``cdc-cache rules check FILE --db DSN`` compares them with the
database before a rollout.

:func:`problems` and :func:`supersedes` are pure; :class:`SchemaWatch` is the edge.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cdc_cache.core import metrics
from cdc_cache.core.events import SchemaChange
from cdc_cache.core.positions import SourcePosition
from cdc_cache.mode.tables import TableFallback
from cdc_cache.plan.route import Control, Rejected, Routed
from cdc_cache.plan.rules import ColumnUse, Rules, TableRules, Use
from cdc_cache.source.natural import UndecodableValue

log = logging.getLogger("cdc_cache.schema_watch")

ROW_CHANGE = "row change"


_FIXES = {
    Use.KEY: "change the key template: without the column no key of this rule can be "
    "rendered, so its keys are only deleted where another image still renders them",
    Use.FIELDS: "remove it from fields: until then every change of the table is "
    "dead-lettered (its keys deleted)",
    Use.CHANNEL: "change the channel template: until then every change of the table is "
    "dead-lettered (its keys deleted)",
    Use.NOTIFY_FIELDS: "remove it from the notification's fields: until then every change "
    "of the table is dead-lettered (its keys deleted)",
    Use.WHEN: "change the key's filter (when): until then every change of the table is "
    "dead-lettered (its keys deleted)",
    Use.TTL: "change the key's ttl expression: until then every change of the table is "
    "dead-lettered (its keys deleted)",
}


@dataclass(frozen=True, slots=True)
class ColumnProblem:
    """A column the rules name that the table does not have (any more, or ever)."""

    table: str
    use: ColumnUse
    path: str
    added: tuple[str, ...] = ()
    dropped: bool = False  # the table had it before (else it never was one, as seen here)

    @property
    def breaks_changes(self) -> bool:
        """The table's changes cannot be applied as planned until the rules change."""
        return self.use.use.breaks_changes

    def fix(self) -> str:
        """What to change in the rules."""
        fix = _FIXES.get(self.use.use, f"remove it from {self.use.use.value}")
        if self.added:
            fix += f"; if it was renamed, the table's new columns are {', '.join(self.added)}"
        return fix

    def text(self) -> str:
        """``file:line: where: what; how to fix`` like the rules loader's messages."""
        return (
            f"{self.path}:{self.use.line}: {self.use.where}: column '{self.use.column}' is "
            f"{'no longer' if self.dropped else 'not'} a column of {self.table}; {self.fix()}"
        )


def problems(
    table: TableRules,
    columns: frozenset[str],
    path: str,
    before: frozenset[str] = frozenset(),
) -> list[ColumnProblem]:
    """Every use of a column the table does not have, in rules-file order.

    ``before`` are the table's columns before this change of shape, if known: the columns
    it just gained are named in the fix as rename candidates.
    """
    new = tuple(sorted(columns - before)) if before else ()
    return [
        ColumnProblem(table.table, use, path, new, use.column in before)
        for use in table.uses
        if use.column not in columns
    ]


@dataclass(frozen=True, slots=True)
class Seen:
    """A table's columns as of a source position (None: a DDL record without one)."""

    columns: frozenset[str]
    position: SourcePosition | None


def supersedes(seen: Seen | None, columns: frozenset[str], at: SourcePosition | None) -> bool:
    """Whether columns observed at ``at`` replace what was seen: other, and not older."""
    if seen is None:
        return True
    if columns == seen.columns:
        return False
    return at is None or seen.position is None or at >= seen.position


class SchemaWatch:
    """Per process: follows each covered table's columns and reports when they change.

    :meth:`observe` is called with every routed batch; a row whose columns are the ones
    already known costs a dictionary lookup and a comparison of key sets.
    """

    def __init__(self, rules: Rules, tables: TableFallback | None = None) -> None:
        self._rules = rules
        self._tables = tables
        self._lock = threading.Lock()
        self._seen: dict[str, Seen] = {}

    def observe(self, batch: Sequence[Routed]) -> None:
        """Check the columns shown by a batch's DDL records and row changes."""
        seen = self._seen
        for item in batch:
            if isinstance(item, Control):
                if isinstance(item.item, SchemaChange):
                    self._ddl(item.item)
                continue
            event = item.event
            if event is None or event.after is None:
                continue
            if isinstance(item, Rejected) and isinstance(item.error, UndecodableValue):
                continue  # its images lack the columns whose values did not decode
            known = seen.get(event.table)
            if known is not None and event.after.keys() == known.columns:
                continue
            if event.table in self._rules.tables:
                self.columns(event.table, frozenset(event.after), event.position, ROW_CHANGE)

    def _ddl(self, change: SchemaChange) -> None:
        for table, columns in change.columns.items():
            if table in self._rules.tables:
                origin = f"DDL {_short(change.ddl)}" if change.ddl else "schema change record"
                self.columns(table, frozenset(columns), change.position, origin)

    def columns(
        self, table: str, columns: frozenset[str], at: SourcePosition | None, origin: str
    ) -> None:
        """``table`` has ``columns`` as of ``at`` (seen in ``origin``): check and report.

        Reported under the lock (a rare path), so reports follow the states in order.
        """
        with self._lock:
            before = self._seen.get(table)
            if not supersedes(before, columns, at):
                return
            self._seen[table] = Seen(columns, at)
            known = before.columns if before is not None else frozenset()
            found = problems(self._rules.tables[table], columns, self._rules.path, known)
            if before is not None:
                metrics.SCHEMA_CHANGES.labels(table).inc()
                log.warning(
                    "columns of a table changed",
                    extra={
                        "table": table,
                        "origin": origin,
                        "position": str(at) if at is not None else None,
                        "added": sorted(columns - known),
                        "dropped": sorted(known - columns),
                        "rules_fit": not found,
                    },
                )
            _report(table, found, origin)
            breaking = [p for p in found if p.breaks_changes]
            if self._tables is not None:
                self._tables.schema(table, _reason(breaking) if breaking else None)

    def known(self, table: str) -> Seen | None:
        """The newest columns seen for ``table``."""
        with self._lock:
            return self._seen.get(table)


def _report(table: str, found: Sequence[ColumnProblem], origin: str) -> None:
    counts: Mapping[bool, int] = {
        breaks: sum(p.breaks_changes == breaks for p in found) for breaks in (True, False)
    }
    for breaks, count in counts.items():
        metrics.RULES_COLUMN_PROBLEMS.labels(table, str(breaks).lower()).set(count)
    for problem in found:
        log.error(
            "the rules name a column the table does not have",
            extra={
                "table": table,
                "column": problem.use.column,
                "rules": f"{problem.path}:{problem.use.line}",
                "where": problem.use.where,
                "breaks_changes": problem.breaks_changes,
                "fix": problem.fix(),
                "origin": origin,
            },
        )


def _reason(breaking: Sequence[ColumnProblem]) -> str:
    first = breaking[0]
    more = f" (and {len(breaking) - 1} more)" if len(breaking) > 1 else ""
    return (
        f"the rules use column '{first.use.column}' ({first.path}:{first.use.line}), which "
        f"{first.table} does not have{more}"
    )


def _short(ddl: str, limit: int = 200) -> str:
    flat = " ".join(ddl.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
