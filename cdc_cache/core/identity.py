"""A table's identity: ``<db>.<table>``, or ``<server>.<db>.<table>`` when sources share names.

One worker reading two connectors whose tables share ``db.table`` names (two shards, two
databases with one schema) must keep them apart: with ``table_identity: server_db_table``
a change's table is qualified by its connector's server name (``topic.prefix``), and the
rules, TRUNCATE positions, per-table holds, metrics labels and dead letters all follow,
since they all use the change's table. Tools that go back to a database map the identity
back with :func:`split`.

Pure: strings in, strings out.
"""

from __future__ import annotations

from enum import StrEnum


class TableIdentity(StrEnum):
    """What names a table (the ``table_identity`` setting)."""

    DB_TABLE = "db_table"
    """``<db|schema>.<table>``: one source per worker, or sources with distinct names."""
    SERVER_DB_TABLE = "server_db_table"
    """``<server>.<db|schema>.<table>``: the server is the connector's ``topic.prefix``."""

    @property
    def parts(self) -> str:
        """How a rules file names a table under this identity (for messages)."""
        if self is TableIdentity.SERVER_DB_TABLE:
            return "<server>.<database|schema>.<table>"
        return "<database|schema>.<table>"


def qualified(identity: TableIdentity, server: str | None, table: str) -> str:
    """``table`` (``<db>.<table>``) as ``identity`` names it; ``server`` required for the server.

    Raises ValueError when the identity needs a server and none is known.
    """
    if identity is TableIdentity.DB_TABLE:
        return table
    if not server:
        msg = (
            f"table_identity is server_db_table but the server of {table} is unknown: "
            "the record has no source.name and its topic is not <topic.prefix>.<db>.<table>"
        )
        raise ValueError(msg)
    return f"{server}.{table}"


def split(name: str) -> tuple[str | None, str]:
    """An identity → (server or None, ``<db>.<table>``); the server may hold dots."""
    parts = name.rsplit(".", 2)
    if len(parts) == 3:
        return parts[0], f"{parts[1]}.{parts[2]}"
    return None, name


def server_of_topic(topic: str) -> str | None:
    """``<prefix>.<db>.<table>`` → ``<prefix>`` (the connector's ``topic.prefix``); else None."""
    parts = topic.rsplit(".", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0]


def table_of_topic_named(identity: TableIdentity, topic: str) -> str | None:
    """The table a topic named ``<prefix>.<db>.<table>`` is for, as ``identity`` names it."""
    server = server_of_topic(topic)
    if server is None:
        return None
    return topic if identity is TableIdentity.SERVER_DB_TABLE else topic[len(server) + 1 :]
