"""``cdc-cache verify``: compare the cache with the database it is derived from.

For each covered table the checker reads the rows (all of them, or a random sample), derives
the keys and values the worker would have written for them, and compares Redis. Expected
values come from :func:`cdc_cache.plan.planner.plan` applied to a snapshot-read event of the row,
so the checker can never disagree with the worker about projection or serialisation. A
table whose values are decoded (rules version 2) has its rows read through the same
decoding a fill uses (:meth:`~cdc_cache.source.natural.TableValues.driver_row`), so dates, JSON
documents, ``real`` and ``DATETIME(6)`` compare as the worker writes them; a table cached
as Debezium ships it has its rows re-encoded as the connector would
(:func:`~cdc_cache.tools.verify_judge.debezium_value`).

Findings, per cache key of a ``set`` rule:

* ``stale``: the key holds a value other than the row's projection (or the wrong type);
* ``unexpected``: a key parsed back to a ``set`` template of the table, with no row for it;
* ``missing``: the row exists, the key does not. Not an error: a TTL or eviction removes
  keys legitimately, and cache-aside readers refill them. Reported apart from stale;
* ``version``: a value without its version (or whose version is a delete tombstone),
  which a late older change could overwrite.

Keys of ``delete`` rules are filled by the application, in whatever shape it likes, so
the checker only counts them and how many are present. Of dependent keys it judges links
and versions against the index (``tools.verify_links``), never their values. Index keys
(zadd, sadd) are judged member by member (``tools.verify_indexes``).

A difference can be a change still in flight (committed, not yet applied). Every
difference is therefore re-checked a few times with a delay, re-reading both the row and
the key, and only differences that persist are reported. The exit code is 1 when any
stale or unexpected key remains, 0 otherwise.

This module runs the check; the judging is pure (``verify_judge``), the reads are in
``verify_reads`` and the report in ``verify_report``. Kept in one module: the pass over one
table's rows and keys, its re-checks and the lookup of a key's row share that table's state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.events import Row
from cdc_cache.plan.cache_ops import IndexMember, SetRow
from cdc_cache.plan.rules import Action, KeyRule, Rules, TableRules
from cdc_cache.sink.connection import Client
from cdc_cache.tools.index_judge import ExpectedIndex, expected_indexes
from cdc_cache.tools.repair import Repairer, Target
from cdc_cache.tools.verify_indexes import IndexCheck
from cdc_cache.tools.verify_judge import (
    Finding,
    KeyPattern,
    Settling,
    Stored,
    derive,
    describe,
    judge,
)
from cdc_cache.tools.verify_links import LinkCheck
from cdc_cache.tools.verify_reads import Database, count_present, read_keys, scan_prefix
from cdc_cache.tools.verify_report import Report, TableReport


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A key that differed: re-checked by its row's primary key or its parsed columns."""

    key: str
    pattern: KeyPattern
    primary_key: Mapping[str, Any] | None


_Pending = tuple[_Candidate, Finding, str]

REPAIRED: Final = frozenset({Finding.STALE, Finding.MISSING, Finding.UNEXPECTED})
"""What ``--repair`` rewrites (a value without a version is left to the next change)."""

Progress = Callable[[int, int, str], None]
"""Hears ``(done, total, note)`` as a check goes (see ``cdc_cache.cli.progress``)."""


@dataclass
class Checker:
    """Runs the check one table at a time; see the module docstring."""

    db: Database
    client: Client
    rules: Rules
    sample: int | None = None
    settle_retries: int = 3
    settle_delay_s: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    progress: Progress | None = None
    repairer: Repairer | None = None
    _step: str = field(default="", init=False, repr=False)  # the table being checked

    def run(self, tables: Iterable[str] = ()) -> Report:
        """Check ``tables`` (default: every covered table)."""
        wanted = list(tables) or list(self.rules.tables)
        unknown = [t for t in wanted if t not in self.rules.tables]
        if unknown:
            msg = (
                f"--table {', '.join(unknown)}: not in {self.rules.path}; "
                f"covered tables: {', '.join(self.rules.tables)}"
            )
            raise ConfigError(msg)
        reports = []
        for index, name in enumerate(wanted, 1):
            self._step = f"{name} ({index}/{len(wanted)} tables)"
            reports.append(self.check_table(self.rules.tables[name]))
        return Report(reports)

    def _report(self, done: int, total: int, what: str) -> None:
        if self.progress is not None:
            self.progress(done, total, f"{self._step}: {what}")

    def check_table(self, table: TableRules) -> TableReport:
        """Bulk pass over rows and keys, then re-checks of whatever differed."""
        report = TableReport(table.table)
        self._report(0, 0, "reading rows")
        primary_key = self.db.primary_key(table.table)
        report.rows_in_table = self.db.count(table.table)
        sampled = self.sample is not None and report.rows_in_table > self.sample
        rows = self.db.rows(table.table, self.sample if sampled else None, table.values)
        report.rows = len(rows)
        patterns = {rule: KeyPattern.of(rule) for rule in table.keys if rule.action is Action.SET}
        expected, deletes, indexes = _implied(table, rows, primary_key, patterns, report)
        report.set_keys = len(expected)
        report.delete_keys = len(deletes)
        report.delete_keys_present = count_present(self.client, sorted(deletes))
        settling = Settling(self.settle_retries, self.settle_delay_s, self.sleep)
        if self.rules.links.get(table.table):
            LinkCheck(self.db, self.client, self.rules, settling).run(
                table, rows, primary_key, report
            )
        index_patterns = [KeyPattern.of(rule) for rule in table.keys if rule.action.indexes]
        if index_patterns:  # with every row read, an index key no row renders is a stray
            known = indexes.keys() | expected.keys() | deletes
            strays = [] if sampled else self._unexpected(index_patterns, known)
            indexes |= {c.key: ExpectedIndex(c.pattern.rule) for c in strays}
            self._report(0, 0, "index keys compared")
            IndexCheck(self.db, self.client, settling).run(
                table, primary_key, indexes, report, complete=not sampled
            )

        keys = list(expected)
        self._report(0, len(keys), "keys compared")
        stored = read_keys(
            self.client,
            [(k, expected[k][0].format) for k in keys],
            lambda n: self._report(n, len(keys), "keys compared"),
        )
        pending: list[_Pending] = []
        for key, now in zip(keys, stored, strict=True):
            op, candidate = expected[key]
            finding = judge(op, now)
            if finding is not None:
                pending.append((candidate, finding, describe(finding, op, now)))
        strangers = self._unexpected(
            list(patterns.values()), expected.keys() | deletes | indexes.keys()
        )
        if sampled and self.sample is not None and len(strangers) > self.sample:
            strangers = self.rng.sample(strangers, self.sample)
        pending += [
            (c, Finding.UNEXPECTED, describe(Finding.UNEXPECTED, None, Stored(None)))
            for c in strangers
        ]
        settled = settling.settled(pending, lambda now: self._rechecked(table, primary_key, now))
        for candidate, finding, detail in settled:
            report.add(finding, f"{candidate.key}: {detail}")
        if self.repairer is not None:
            targets = [
                Target(c.key, c.pattern, c.primary_key) for c, f, _ in settled if f in REPAIRED
            ]
            self._report(0, len(targets), "repairing")
            report.repaired = self.repairer.repair(table, primary_key, targets)
            self._report(len(targets), len(targets), "repaired")
        return report

    def _unexpected(self, patterns: Sequence[KeyPattern], known: set[str]) -> list[_Candidate]:
        """Keys under the table's set prefixes that parse as its keys but no row yields.

        Keys that also parse as any table's ``delete`` key belong to the application.
        """
        foreign = [
            KeyPattern.of(rule)
            for other in self.rules.tables.values()
            for rule in other.keys
            if rule.action is Action.DELETE
        ]
        out: list[_Candidate] = []
        for prefix in dict.fromkeys(p.rule.template.static_prefix for p in patterns):
            for key in scan_prefix(self.client, prefix):
                if key in known or any(f.parse(key) is not None for f in foreign):
                    continue
                pattern = next((p for p in patterns if p.parse(key) is not None), None)
                if pattern is not None:
                    out.append(_Candidate(key, pattern, None))
        return out

    def _rechecked(
        self, table: TableRules, primary_key: Sequence[str], pending: list[_Pending]
    ) -> list[_Pending]:
        """The differences in ``pending`` that are still there, re-read."""
        rechecked = [(c, *self._recheck(table, primary_key, c)) for c, _, _ in pending]
        return [(c, f, d) for c, f, d in rechecked if f is not None]

    def _recheck(
        self, table: TableRules, primary_key: Sequence[str], candidate: _Candidate
    ) -> tuple[Finding | None, str]:
        """Re-read the row that renders the key (if any), then the key itself."""
        row = self._row_for(table, primary_key, candidate)
        expected = None
        if row is not None:
            expected = next(
                op for _, op in derive(table, row, primary_key).sets if op.key == candidate.key
            )
        stored = read_keys(self.client, [(candidate.key, candidate.pattern.rule.format)])[0]
        finding = judge(expected, stored)
        return finding, describe(finding, expected, stored)

    def _row_for(
        self, table: TableRules, primary_key: Sequence[str], candidate: _Candidate
    ) -> dict[str, Any] | None:
        key, pattern = candidate.key, candidate.pattern
        return row_for_key(self.db, table, primary_key, key, pattern, known=candidate.primary_key)


def _implied(
    table: TableRules,
    rows: Sequence[Row],
    primary_key: Sequence[str],
    patterns: Mapping[KeyRule, KeyPattern],
    report: TableReport,
) -> tuple[dict[str, tuple[SetRow, _Candidate]], set[str], dict[str, ExpectedIndex]]:
    """What ``rows`` imply: set keys with their values, delete keys, index keys.

    A row the rules cannot render implies nothing and is counted in ``report`` instead.
    """
    expected: dict[str, tuple[SetRow, _Candidate]] = {}
    deletes: set[str] = set()
    members: list[tuple[KeyRule, IndexMember]] = []
    for row in rows:
        derived = derive(table, row, primary_key)
        pk = {column: row[column] for column in primary_key}
        if derived.unrenderable is not None:
            report.add_unrenderable(f"{pk}: {derived.unrenderable}")
        for rule, op in derived.sets:
            expected[op.key] = (op, _Candidate(op.key, patterns[rule], pk))
        deletes.update(derived.deletes)
        members += derived.members
    return expected, deletes, expected_indexes(members)


def row_for_key(
    db: Database,
    table: TableRules,
    primary_key: Sequence[str],
    key: str,
    pattern: KeyPattern,
    *,
    known: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The row of ``table`` that renders ``key`` through ``pattern``'s rule, if any.

    Tried first by the primary key ``known`` (the row the key was expected from), then by
    the column values parsed back from the key.
    """

    def renders(row: Row) -> bool:
        sets = derive(table, row, primary_key).sets
        return any(op.key == key for _, op in sets)

    if known is not None:
        found = db.matching(table.table, known, as_text=False, shape=table.values)
        if found and renders(found[0]):
            return found[0]
    values = pattern.parse(key) or {}
    if not values:
        return None  # every column was digested: no lookup would be bounded
    rows = db.matching(table.table, values, as_text=True, shape=table.values)
    return next((row for row in rows if renders(row)), None)


def verify(
    dsn: str,
    rules: Rules,
    client: Client,
    *,
    tables: Sequence[str] = (),
    sample: int | None = None,
    settle_retries: int = 3,
    settle_delay_s: float = 0.5,
    progress: Progress | None = None,
    repair: bool = False,
    epoch: int = 0,
) -> Report:
    """Check ``tables`` (default: every covered table) of the database at ``dsn``.

    ``progress(done, total, note)`` hears of each table's keys as they are compared. With
    ``repair`` the stale, missing and unexpected keys found are rewritten from the
    database (:mod:`cdc_cache.tools.repair`, at ``epoch`` or the key's own); index keys are
    left to a snapshot of their table, which keeps their members' versions and record right.
    """
    if sample is not None and sample <= 0:
        msg = f"--sample {sample}: give a positive number of rows"
        raise ConfigError(msg)
    db = Database.connect(dsn)
    try:
        repairer = Repairer(db, client, row_of_target, epoch=epoch) if repair else None
        checker = Checker(
            db,
            client,
            rules,
            sample,
            settle_retries,
            settle_delay_s,
            progress=progress,
            repairer=repairer,
        )
        return checker.run(tables)
    finally:
        db.close()


def row_of_target(
    db: Database, table: TableRules, primary_key: Sequence[str], target: Target
) -> dict[str, Any] | None:
    """The row a repair rewrites ``target`` from (None: no row renders it)."""
    return row_for_key(db, table, primary_key, target.key, target.pattern, known=target.primary_key)
