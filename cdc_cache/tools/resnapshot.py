"""``cdc-cache snapshot``: ask the connector to read tables again (an incremental snapshot).

Debezium's source signalling channel: a row inserted into the connector's signal table
(``signal.data.collection``) with type ``execute-snapshot`` and data
``{"data-collections": [...], "type": "incremental"}`` makes the connector read those
tables again in chunks while it goes on streaming. The rows arrive on the tables' topics
as reads (``op: r``) carrying the binlog or WAL position where their chunk closed, so the
worker applies them like any other change: through the version gate, where a change
committed after the chunk was read has a later position and wins, and Debezium drops a
chunk's row when the row changed while the chunk was read.

A snapshot carries no deletes: a key whose row is gone from the database is not removed
by it (``cdc-cache verify`` finds such keys).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from cdc_cache.core.errors import CdcCacheError, ConfigError
from cdc_cache.core.identity import split
from cdc_cache.tools.verify_reads import Database

_NAME: Final = re.compile(r"[A-Za-z0-9_$]+(\.[A-Za-z0-9_$]+)")
SIGNAL_TYPE: Final = "execute-snapshot"


class SnapshotRequestFailed(CdcCacheError):
    """The signal could not be written (no signal table, no INSERT permission, ...)."""


@dataclass(frozen=True)
class SnapshotSignal:
    """One row of the signal table: its ``id``, ``type`` and ``data`` columns."""

    id: str
    type: str
    data: str
    tables: tuple[str, ...]


def snapshot_signal(tables: Sequence[str], signal_id: str | None = None) -> SnapshotSignal:
    """The signal asking for an incremental snapshot of ``tables`` (``<db>.<table>``)."""
    wanted = tuple(dict.fromkeys(t.strip() for t in tables))
    if not wanted:
        msg = "name the tables to snapshot again: --table <db>.<table> (repeatable)"
        raise ConfigError(msg)
    for table in wanted:
        if not _NAME.fullmatch(table):
            server, name = split(table)
            msg = (
                f"--table {table!r}: give <database>.<table> (MySQL) or <schema>.<table> "
                "(PostgreSQL), as the connector's table.include.list names it"
            )
            if server is not None and _NAME.fullmatch(name):
                msg += (  # a server_db_table identity: the database knows no server
                    f"; for server {server}'s table give --table {name} with --db and "
                    f"--signal-table of {server}'s database"
                )
            raise ConfigError(msg)
    data = orjson.dumps({"data-collections": list(wanted), "type": "incremental"}).decode()
    return SnapshotSignal(signal_id or f"cdc-cache-{uuid.uuid4()}", SIGNAL_TYPE, data, wanted)


def signal_table_name(name: str) -> str:
    """``name`` checked: the connector's ``signal.data.collection``, ``<db>.<table>``."""
    if not _NAME.fullmatch(name):
        msg = (
            f"--signal-table {name!r}: give the connector's signal.data.collection, "
            "<database>.<table> or <schema>.<table>"
        )
        raise ConfigError(msg)
    return name


def request_snapshot(dsn: str, signal_table: str, signal: SnapshotSignal) -> None:
    """Insert ``signal`` into the connector's signal table (committed at once)."""
    parts = signal_table_name(signal_table).split(".")
    db = Database.connect(dsn)
    quote = "`" if db.dialect == "mysql" else '"'
    table = ".".join(f"{quote}{part}{quote}" for part in parts)
    sql = f"INSERT INTO {table} (id, type, data) VALUES (%s, %s, %s)"
    try:
        with db.conn.cursor() as cur:
            cur.execute(sql, (signal.id, signal.type, signal.data))
    except Exception as exc:
        msg = (
            f"cannot write the signal into {signal_table}: {exc}; the table must exist with "
            "columns (id VARCHAR(64) PRIMARY KEY, type VARCHAR(32), data VARCHAR(2048)), be "
            "the connector's signal.data.collection, and the user of --db needs INSERT on it "
            "(see connectors/README.md)"
        )
        raise SnapshotRequestFailed(msg) from exc
    finally:
        db.close()
