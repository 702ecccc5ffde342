"""What ``cdc-cache verify`` reads: rows from the database, keys and versions from Redis.

The database connection is read-only and autocommit, so every read sees the latest
committed rows, with values as the table caches them (see ``tools.verify_judge``); Redis
is read in pipelined chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

from redis import exceptions as rex

from cdc_cache.core.errors import CdcCacheError, ConfigError
from cdc_cache.core.keys import ns, version_field
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.sink.connection import Client
from cdc_cache.sink.invalidate_prefix import glob_escape
from cdc_cache.sink.versions import parse_stored
from cdc_cache.source.natural import TableValues
from cdc_cache.tools.link_judge import Link, LinkState
from cdc_cache.tools.verify_judge import Dialect, Stored, as_cached

_PIPELINE_CHUNK: Final = 1000


class VerifyError(CdcCacheError):
    """The check cannot run (bad DSN, unknown table, table without primary key)."""


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

    @contextmanager
    def consistent_snapshot(self) -> Iterator[tuple[str, int]]:
        """A read-only transaction on one consistent snapshot, and its binlog position.

        Yields MariaDB's ``binlog_snapshot_file`` and ``binlog_snapshot_position``: every
        transaction committed before the snapshot is in what it reads, every later one is
        written to the binlog at or after that position. Raises VerifyError where the
        database cannot tell that position (MySQL, PostgreSQL).
        """
        if self.dialect != "mysql":
            msg = (
                "--repair needs the binlog position of a consistent snapshot, which "
                "PostgreSQL does not report in terms of Debezium's commit LSN ordering; "
                "repair by deleting the keys verify names (the worker or a fill rewrites them)"
            )
            raise VerifyError(msg)
        with self.conn.cursor() as cur:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            try:
                cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
                status = {str(name): str(value) for name, value in cur.fetchall()}
                file = status.get("Binlog_snapshot_file", "")
                position = status.get("Binlog_snapshot_position", "")
                if not file or not position.isdigit():
                    msg = (
                        "--repair needs MariaDB's binlog_snapshot_file and "
                        "binlog_snapshot_position (the binlog position of a consistent "
                        "snapshot, binary logging on); this server reports none, and a "
                        "position read apart from the snapshot could rank a repair above a "
                        "change the snapshot does not see"
                    )
                    raise VerifyError(msg)
                yield file, int(position)
            finally:
                cur.execute("COMMIT")

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

    def columns(self, table: str) -> frozenset[str]:
        """The table's column names (empty: no such table, or not visible to this user)."""
        schema, name = table.split(".", 1)
        rows = self._query(
            "SELECT column_name AS c FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (schema, name),
        )
        return frozenset(str(next(iter(r.values()))) for r in rows)

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


def chunks(items: Sequence[Any], size: int = _PIPELINE_CHUNK) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size``: one pipeline each, so no reply grows unbounded."""
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
    for chunk in chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key, value_format in chunk:
            if value_format is ValueFormat.HASH:
                pipe.hgetall(key)
            else:
                pipe.get(key)
            pipe.hget(ns().version_key(key), version_field(key))
        replies = pipe.execute(raise_on_error=False)
        for value, version in zip(replies[::2], replies[1::2], strict=True):
            if isinstance(version, Exception) and not isinstance(version, rex.ResponseError):
                raise version
            text = version_text(version)
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


def version_text(stored: object) -> str | None:
    """The version in a bucket field's value; None when absent or unreadable."""
    if not isinstance(stored, bytes):
        return None
    try:
        return parse_stored(stored)[1]
    except ValueError:
        return None


def count_present(client: Client, keys: Sequence[str]) -> int:
    """How many of ``keys`` exist (pipelined EXISTS)."""
    present = 0
    for chunk in chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.exists(key)
        present += sum(int(n) for n in pipe.execute())
    return present


def scan_prefix(client: Client, prefix: str) -> Iterator[str]:
    """Every key under ``prefix`` (all primaries on a cluster), as text."""
    for raw in client.scan_iter(match=glob_escape(prefix) + "*", count=1000):
        yield raw.decode("utf-8", "replace")


def read_links(client: Client, links: Sequence[Link]) -> list[LinkState]:
    """What Redis holds for each link: member, tag version, key presence and version."""
    out: list[LinkState] = []
    for chunk in chunks(links):
        pipe = client.pipeline(transaction=False)
        for link in chunk:
            pipe.hget(ns().tag_key(link.tag), link.member)
            pipe.hget(ns().tag_key(link.tag), "")
            pipe.exists(link.key)
            pipe.hget(ns().version_key(link.key), version_field(link.key))
        replies = pipe.execute()
        for i in range(0, len(replies), 4):
            held, version, present, stored = replies[i : i + 4]
            out.append(
                LinkState(
                    held.decode() if held is not None else None,
                    version.decode() if version else None,
                    bool(present),
                    version_text(stored),
                )
            )
    return out
