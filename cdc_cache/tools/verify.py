"""``cdc-cache verify``: compare the cache with the database it is derived from.

For each covered table the checker reads the rows (all of them, or a random sample), derives
the keys and values the worker would have written for them, and compares Redis. Expected
values come from :func:`cdc_cache.plan.planner.plan` applied to a snapshot-read event of the row,
so the checker can never disagree with the worker about projection or serialisation. A
table whose values are decoded (rules version 2) has its rows read through the same
decoding a fill uses (:meth:`~cdc_cache.source.natural.TableValues.driver_row`), so dates, JSON
documents, ``real`` and ``DATETIME(6)`` compare as the worker writes them; a table cached
as Debezium ships it has its rows re-encoded as the connector would (:func:`debezium_value`).

Findings, per cache key of a ``set`` rule:

* ``stale``: the key holds a value other than the row's projection (or the wrong type);
* ``unexpected``: a key parsed back to a ``set`` template of the table, with no row for it;
* ``missing``: the row exists, the key does not. Not an error: a TTL or eviction removes
  keys legitimately, and cache-aside readers refill them. Reported apart from stale;
* ``version``: a value without its version key (or whose version is a delete tombstone),
  which a late older change could overwrite.

Keys of ``delete`` rules are filled by the application, in whatever shape it likes, so
the checker only counts them and how many are present; it cannot judge them.

A difference can be a change still in flight (committed, not yet applied). Every
difference is therefore re-checked a few times with a delay, re-reading both the row and
the key, and only differences that persist are reported. The exit code is 1 when any
stale or unexpected key remains, 0 otherwise.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import Any, Final, Literal
from urllib.parse import SplitResult, unquote, unquote_to_bytes, urlsplit

import orjson
from redis import exceptions as rex

from cdc_cache.core.errors import CdcCacheError, ConfigError
from cdc_cache.core.events import ChangeEvent, Op, Row
from cdc_cache.core.keys import NULL_TOKEN, version_key
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, Notify, SetRow, ValueFormat
from cdc_cache.plan.planner import plan
from cdc_cache.plan.rules import Action, KeyRule, Rules, TableRules
from cdc_cache.sink.apply import Client
from cdc_cache.source.natural import TableValues, cursor_types

Dialect = Literal["mysql", "postgresql"]

EXAMPLES_PER_CATEGORY: Final = 5
_EPOCH: Final = dt.date(1970, 1, 1)
_EPOCH_DT: Final = dt.datetime(1970, 1, 1)  # noqa: DTZ001 - naive on purpose: DATETIME columns
_ESCAPED: Final = "[A-Za-z0-9._@%~-]*"  # what keys.escape_value can produce
_ANY_POSITION: Final = SourcePosition(0, 0, 0, 0)
_PIPELINE_CHUNK: Final = 1000
# PyMySQL's type code of TIMESTAMP columns, which Debezium ships as an ISO string in UTC.
_MYSQL_TIMESTAMP: Final = 7


Progress = Callable[[int, int, str], None]
"""Hears ``(done, total, note)`` as a check goes (see ``cdc_cache.cli.progress``)."""


class VerifyError(CdcCacheError):
    """The check cannot run (bad DSN, unknown table, table without primary key)."""


class Finding(StrEnum):
    """What is wrong with one cache key."""

    STALE = "stale"
    UNEXPECTED = "unexpected"
    MISSING = "missing"
    VERSION = "version"


FAILING: Final = frozenset({Finding.STALE, Finding.UNEXPECTED})


# --------------------------------------------------------------------------- pure core


def debezium_value(value: Any, dialect: Dialect, *, timestamp: bool = False) -> Any:
    """A database driver's value as Debezium's JSON converter ships it.

    Assumes the connector settings of ``cdc_cache.tools.devstack.debezium`` (decimals as strings,
    default temporal precision): DECIMAL → plain string, DATE → days since epoch, MySQL
    DATETIME → epoch ms, PostgreSQL TIMESTAMP → epoch µs, TIME → µs since midnight,
    TIMESTAMP WITH TIME ZONE / MySQL TIMESTAMP (``timestamp``) → ISO-8601 UTC, binary →
    base64. Other values are passed through.
    """
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None or timestamp:
            utc = value.replace(tzinfo=value.tzinfo or dt.UTC).astimezone(dt.UTC)
            return utc.isoformat().replace("+00:00", "Z")
        delta = value - _EPOCH_DT
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return micros // 1000 if dialect == "mysql" else micros
    if isinstance(value, dt.date):
        return (value - _EPOCH).days
    if isinstance(value, dt.timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if isinstance(value, dt.time):
        return (
            (value.hour * 60 + value.minute) * 60 + value.second
        ) * 1_000_000 + value.microsecond
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return value


def as_cached(
    row: Mapping[str, Any], cursor: Any, shape: TableValues | None, dialect: Dialect
) -> dict[str, Any]:
    """A row as ``cursor`` returned it, with its values as ``shape`` caches them.

    Decoded (:meth:`~cdc_cache.source.natural.TableValues.driver_row`), or as Debezium ships them
    when ``shape`` is None or a table of rules version 1. ``cursor`` is PyMySQL's or
    psycopg's, its session in UTC.
    """
    if shape is not None and shape.natural:
        return shape.driver_row(row, cursor_types(cursor))
    stamps = {
        d[0] for d in cursor.description or () if dialect == "mysql" and d[1] == _MYSQL_TIMESTAMP
    }
    return {
        name: debezium_value(value, dialect, timestamp=name in stamps)
        for name, value in row.items()
    }


@dataclass(frozen=True, slots=True)
class Derived:
    """The keys one row yields: values for ``set`` rules, names for ``delete`` rules."""

    sets: tuple[tuple[KeyRule, SetRow], ...]
    deletes: tuple[str, ...]


def derive(table: TableRules, row: Row, primary_key: Sequence[str]) -> Derived:
    """What the worker would write for ``row``, via the planner.

    ``row`` holds the values as the table caches them (natural values, or Debezium's wire
    values for a table cached as shipped): :meth:`Database.rows` reads them so.
    """
    event = ChangeEvent(
        table=table.table,
        op=Op.READ,
        before=None,
        after=row,
        key={column: row[column] for column in primary_key},
        position=_ANY_POSITION,
        committed_at_ms=None,
        snapshot=True,
    )
    # A snapshot read yields exactly one op per key rule, in rule order (notifications aside).
    ops = [op for op in plan(event, Rules({table.table: table})) if not isinstance(op, Notify)]
    pairs = list(zip(table.keys, ops, strict=True))
    return Derived(
        sets=tuple((rule, op) for rule, op in pairs if isinstance(op, SetRow)),
        deletes=tuple(op.key for _, op in pairs if isinstance(op, DeleteKey)),
    )


@dataclass(frozen=True, slots=True)
class Stored:
    """What Redis holds for one key: the value (absent: None) and its version."""

    value: bytes | Mapping[str, str] | None
    version: str | None = None
    wrong_type: bool = False

    @property
    def present(self) -> bool:
        return self.wrong_type or self.value is not None


def same_value(expected: SetRow, stored: bytes | Mapping[str, str]) -> bool:
    """Whether a stored value equals the projection (JSON compared as documents)."""
    if isinstance(expected.value, tuple):
        return isinstance(stored, Mapping) and dict(stored) == dict(expected.value)
    if not isinstance(stored, bytes):
        return False
    try:
        return bool(orjson.loads(stored) == orjson.loads(expected.value))
    except orjson.JSONDecodeError:
        return False


def judge(expected: SetRow | None, stored: Stored) -> Finding | None:
    """The finding for one key, given what its row implies (None: no row renders it)."""
    if expected is None:
        return Finding.UNEXPECTED if stored.present else None
    if not stored.present:
        return Finding.MISSING
    if stored.wrong_type or stored.value is None or not same_value(expected, stored.value):
        return Finding.STALE
    if stored.version is None or not stored.version.endswith(".s"):
        return Finding.VERSION
    return None


@dataclass(frozen=True, slots=True)
class KeyPattern:
    """A ``set`` template compiled back into a parser of the keys it renders."""

    rule: KeyRule
    regex: re.Pattern[str]

    @classmethod
    def of(cls, rule: KeyRule) -> KeyPattern:
        parts = [
            re.escape(literal) + (f"({_ESCAPED})" if name is not None else "")
            for literal, name in rule.template.pieces
        ]
        return cls(rule, re.compile("".join(parts)))

    def parse(self, key: str) -> dict[str, str | None] | None:
        """Column values a key was rendered from: text, None for NULL, or None if not ours.

        Values shortened to a digest cannot be read back; their columns are left out.
        """
        match = self.regex.fullmatch(key)
        if match is None:
            return None
        values: dict[str, str | None] = {}
        for column, text in zip(self.rule.template.columns, match.groups(), strict=True):
            if text == NULL_TOKEN:
                values[column] = None
            elif NULL_TOKEN not in text:
                values[column] = unquote_to_bytes(text).decode("utf-8", "replace")
        return values


def nines(total: int, bad: int) -> str:
    """``total - bad`` of ``total`` as a percentage cut (never rounded up) to its nines."""
    if total <= 0 or bad <= 0:
        return "100 %"
    good = Decimal(total - bad) / Decimal(total)
    count = 0
    while count < 12 and good >= 1 - Decimal(10) ** -(count + 1):
        count += 1
    pct = (good * 100).quantize(Decimal(10) ** -max(1, count - 1), rounding=ROUND_DOWN)
    return f"{pct.normalize():f} %"


@dataclass
class TableReport:
    """Counts and examples for one table."""

    table: str
    rows: int = 0
    rows_in_table: int = 0
    set_keys: int = 0
    delete_keys: int = 0
    delete_keys_present: int = 0
    findings: Counter[Finding] = field(default_factory=Counter)
    examples: dict[Finding, list[str]] = field(default_factory=dict)

    def add(self, finding: Finding, example: str) -> None:
        self.findings[finding] += 1
        shown = self.examples.setdefault(finding, [])
        if len(shown) < EXAMPLES_PER_CATEGORY:
            shown.append(example)


@dataclass
class Report:
    """The whole check: per-table results, the consistency figure and the exit code."""

    tables: list[TableReport] = field(default_factory=list)

    def count(self, finding: Finding) -> int:
        return sum(t.findings[finding] for t in self.tables)

    @property
    def checked(self) -> int:
        """Keys judged: every expected ``set`` key plus every unexpected one found."""
        return sum(t.set_keys for t in self.tables) + self.count(Finding.UNEXPECTED)

    @property
    def clean(self) -> bool:
        """Nothing at all to report (stricter than the exit code: missing keys count)."""
        return not any(t.findings for t in self.tables)

    @property
    def exit_code(self) -> int:
        return 1 if any(self.count(f) for f in FAILING) else 0

    def as_json(self) -> dict[str, Any]:
        """The report as plain JSON data (``--json``)."""
        bad = sum(self.count(f) for f in FAILING)
        return {
            "tables": [
                {
                    "table": t.table,
                    "rows": t.rows,
                    "rows_in_table": t.rows_in_table,
                    "set_keys": t.set_keys,
                    "delete_keys": t.delete_keys,
                    "delete_keys_present": t.delete_keys_present,
                    "findings": {f.value: t.findings[f] for f in Finding},
                    "examples": {f.value: shown for f, shown in t.examples.items()},
                }
                for t in self.tables
            ],
            "checked": self.checked,
            "consistency": nines(self.checked, bad),
            "findings": {f.value: self.count(f) for f in Finding},
            "exit_code": self.exit_code,
        }

    def format(self) -> str:
        """The human-readable report."""
        lines: list[str] = []
        for t in self.tables:
            sampled = f" (sample of {t.rows_in_table})" if t.rows < t.rows_in_table else ""
            lines.append(
                f"{t.table}: {t.rows} rows{sampled}, {t.set_keys} set keys, "
                f"{t.delete_keys} delete keys ({t.delete_keys_present} present; "
                "filled by the application, not judged)"
            )
            lines.append("  " + "  ".join(f"{f.value} {t.findings[f]}" for f in Finding))
            for finding, examples in t.examples.items():
                for example in examples:
                    lines.append(f"  {finding.value}: {example}")
        bad = sum(self.count(f) for f in FAILING)
        lines.append(
            f"total: {self.checked} keys checked; consistency {nines(self.checked, bad)} "
            f"({self.count(Finding.STALE)} stale, {self.count(Finding.UNEXPECTED)} unexpected); "
            f"{self.count(Finding.MISSING)} missing (TTL/eviction or not yet filled); "
            f"{self.count(Finding.VERSION)} version anomalies"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------- database edge


@dataclass
class Database:
    """A read-only autocommit connection, so every read sees the latest committed rows."""

    dialect: Dialect
    conn: Any
    _quote: str = '"'

    @classmethod
    def connect(cls, dsn: str) -> Database:
        """Open ``mysql://user:pass@host:port/db`` or ``postgresql://...``."""
        parts = urlsplit(dsn)
        try:
            return cls._open(dsn, parts)
        except Exception as exc:
            if isinstance(exc, CdcCacheError):
                raise
            where = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
            msg = f"cannot connect to {where}: {exc}; check --db (user, password, host, port)"
            raise VerifyError(msg) from exc

    @classmethod
    def _open(cls, dsn: str, parts: SplitResult) -> Database:
        if parts.scheme in ("mysql", "mariadb"):
            import pymysql

            conn = pymysql.connect(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 3306,
                user=unquote(parts.username or "root"),
                password=unquote(parts.password or ""),
                database=parts.path.lstrip("/") or None,
                autocommit=True,
                connect_timeout=10,
            )
            with conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
            return cls("mysql", conn, "`")
        if parts.scheme in ("postgresql", "postgres"):
            import psycopg

            return cls("postgresql", psycopg.connect(dsn, autocommit=True, connect_timeout=10))
        msg = (
            f"--db {parts.scheme}://...: unsupported; use mysql://user:pass@host:port/db "
            "or postgresql://user:pass@host:port/db"
        )
        raise ConfigError(msg)

    def close(self) -> None:
        self.conn.close()

    def _name(self, table: str) -> str:
        return ".".join(f"{self._quote}{part}{self._quote}" for part in table.split(".", 1))

    def _query(
        self, sql: str, params: Sequence[Any] = (), shape: TableValues | None = None
    ) -> Iterator[dict[str, Any]]:
        """Rows with their values as ``shape`` caches them (None: as Debezium ships them)."""
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            names = [d[0] for d in cur.description or ()]
            for record in cur.fetchall():
                yield as_cached(dict(zip(names, record, strict=True)), cur, shape, self.dialect)

    def primary_key(self, table: str) -> tuple[str, ...]:
        """The table's primary key columns, in key order."""
        schema, name = table.split(".", 1)
        rows = self._query(
            "SELECT k.column_name AS c FROM information_schema.table_constraints t "
            "JOIN information_schema.key_column_usage k ON k.constraint_name = t.constraint_name "
            "AND k.table_schema = t.table_schema AND k.table_name = t.table_name "
            "WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = %s "
            "AND t.table_name = %s ORDER BY k.ordinal_position",
            (schema, name),
        )
        columns = tuple(str(next(iter(r.values()))) for r in rows)
        if not columns:
            msg = (
                f"table {table} does not exist or has no primary key: check the table name "
                "in the rules (<db>.<table> or <schema>.<table>) and the --db DSN"
            )
            raise VerifyError(msg)
        return columns

    def count(self, table: str) -> int:
        rows = list(self._query(f"SELECT COUNT(*) AS n FROM {self._name(table)}"))
        return int(next(iter(rows[0].values())))

    def rows(
        self, table: str, sample: int | None = None, shape: TableValues | None = None
    ) -> list[dict[str, Any]]:
        """Every row, or ``sample`` random ones, with values as ``shape`` caches them."""
        sql = f"SELECT * FROM {self._name(table)}"
        if sample is not None:
            order = "RAND()" if self.dialect == "mysql" else "random()"
            sql += f" ORDER BY {order} LIMIT {int(sample)}"
        return list(self._query(sql, shape=shape))

    def matching(
        self,
        table: str,
        values: Mapping[str, Any],
        *,
        as_text: bool,
        shape: TableValues | None = None,
    ) -> list[dict[str, Any]]:
        """Rows whose columns equal ``values`` (None: IS NULL); every row if ``values`` is empty.

        ``as_text`` compares the columns' text form, for values parsed back from keys;
        ``shape`` as for :meth:`rows`.
        """

        def column(name: str) -> str:
            quoted = f"{self._quote}{name}{self._quote}"
            return f"CAST({quoted} AS {self._text})" if as_text else quoted

        conditions = [
            f"{column(c)} IS NULL" if v is None else f"{column(c)} = %s" for c, v in values.items()
        ]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        params = [v for v in values.values() if v is not None]
        return list(self._query(f"SELECT * FROM {self._name(table)}{where}", params, shape))

    @property
    def _text(self) -> str:
        return "CHAR" if self.dialect == "mysql" else "TEXT"


# --------------------------------------------------------------------------- redis edge


def _chunks(items: Sequence[Any], size: int = _PIPELINE_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_keys(
    client: Client,
    keys: Sequence[tuple[str, ValueFormat]],
    on_read: Callable[[int], None] | None = None,
) -> list[Stored]:
    """Each key's value (GET or HGETALL by its format) and version, pipelined.

    ``on_read(n)`` hears how many keys were read so far, after each pipeline.
    """
    out: list[Stored] = []
    for chunk in _chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key, value_format in chunk:
            if value_format is ValueFormat.HASH:
                pipe.hgetall(key)
            else:
                pipe.get(key)
            pipe.get(version_key(key))
        replies = pipe.execute(raise_on_error=False)
        for value, version in zip(replies[::2], replies[1::2], strict=True):
            if isinstance(version, Exception) and not isinstance(version, rex.ResponseError):
                raise version
            text = version.decode() if isinstance(version, bytes) else None
            if isinstance(value, rex.ResponseError):  # WRONGTYPE: a hash where JSON belongs
                out.append(Stored(None, text, wrong_type=True))
            elif isinstance(value, Exception):
                raise value
            elif isinstance(value, dict):
                decoded = {k.decode(): v.decode() for k, v in value.items()}
                out.append(Stored(decoded or None, text))
            else:
                out.append(Stored(value, text))
        if on_read is not None:
            on_read(len(out))
    return out


def count_present(client: Client, keys: Sequence[str]) -> int:
    """How many of ``keys`` exist (pipelined EXISTS)."""
    present = 0
    for chunk in _chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.exists(key)
        present += sum(int(n) for n in pipe.execute())
    return present


def scan_prefix(client: Client, prefix: str) -> Iterator[str]:
    """Every key under ``prefix`` (all primaries on a cluster), as text."""
    pattern = "".join(f"\\{ch}" if ch in "\\*?[]" else ch for ch in prefix) + "*"
    for raw in client.scan_iter(match=pattern, count=1000):
        yield raw.decode("utf-8", "replace")


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A key that differed: re-checked by its row's primary key or its parsed columns."""

    key: str
    pattern: KeyPattern
    primary_key: Mapping[str, Any] | None


_Pending = tuple[_Candidate, Finding, str]


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
        expected: dict[str, tuple[SetRow, _Candidate]] = {}
        deletes: set[str] = set()
        for row in rows:
            derived = derive(table, row, primary_key)
            pk = {column: row[column] for column in primary_key}
            for rule, op in derived.sets:
                expected[op.key] = (op, _Candidate(op.key, patterns[rule], pk))
            deletes.update(derived.deletes)
        report.set_keys = len(expected)
        report.delete_keys = len(deletes)
        report.delete_keys_present = count_present(self.client, sorted(deletes))

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
                pending.append((candidate, finding, _describe(finding, op, now)))
        strangers = self._unexpected(list(patterns.values()), expected.keys() | deletes)
        if sampled and self.sample is not None and len(strangers) > self.sample:
            strangers = self.rng.sample(strangers, self.sample)
        pending += [
            (c, Finding.UNEXPECTED, _describe(Finding.UNEXPECTED, None, Stored(None)))
            for c in strangers
        ]
        for candidate, finding, detail in self._settle(table, primary_key, pending):
            report.add(finding, f"{candidate.key}: {detail}")
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

    def _settle(
        self, table: TableRules, primary_key: Sequence[str], pending: list[_Pending]
    ) -> list[_Pending]:
        """Re-check every difference until it goes away or the retries run out."""
        for _ in range(self.settle_retries):
            if not pending:
                break
            self.sleep(self.settle_delay_s)
            rechecked = [(c, *self._recheck(table, primary_key, c)) for c, _, _ in pending]
            pending = [(c, f, d) for c, f, d in rechecked if f is not None]
        return pending

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
        return finding, _describe(finding, expected, stored)

    def _row_for(
        self, table: TableRules, primary_key: Sequence[str], candidate: _Candidate
    ) -> dict[str, Any] | None:
        key, pattern = candidate.key, candidate.pattern
        return row_for_key(self.db, table, primary_key, key, pattern, known=candidate.primary_key)


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


def _describe(finding: Finding | None, expected: SetRow | None, stored: Stored) -> str:
    if finding is Finding.UNEXPECTED:
        return "no row renders this key"
    if finding is Finding.MISSING:
        return f"absent (version {stored.version or 'none'})"
    if finding is Finding.VERSION:
        return f"value present, version {stored.version or 'missing'}"
    if finding is Finding.STALE and expected is not None:
        shown = "a value of the wrong type" if stored.wrong_type else _short(stored.value)
        return f"holds {shown}, row gives {_short(expected.value)}"
    return "consistent"


def _short(value: object, limit: int = 160) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
) -> Report:
    """Check ``tables`` (default: every covered table) of the database at ``dsn``.

    ``progress(done, total, note)`` hears of each table's keys as they are compared.
    """
    if sample is not None and sample <= 0:
        msg = f"--sample {sample}: give a positive number of rows"
        raise ConfigError(msg)
    db = Database.connect(dsn)
    try:
        checker = Checker(
            db, client, rules, sample, settle_retries, settle_delay_s, progress=progress
        )
        return checker.run(tables)
    finally:
        db.close()
