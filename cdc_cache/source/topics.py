"""What Debezium's topic names say, and what they cannot once users route them.

Debezium names a table's topic ``<topic.prefix>.<db|schema>.<table>`` (the prefix may hold
dots: ``prod.eu.dbserver1``), its heartbeats ``__debezium-heartbeat.<topic.prefix>`` and its
schema changes ``<topic.prefix>``. Routing transforms change that: ``ByLogicalTableRouter``
sends several tables to one topic and adds the original topic name to each record's key
(``__dbz__physicalTableIdentifier``; ``__dbz__sourceIdentifier`` for its successor
``ToLogicalTopicRouter``), ``RegexRouter`` renames topics and leaves no trace in the
record. So a topic name is only a fallback: the decoder takes a record's table from the
record whenever the record says it.

Pure: strings in, strings out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

HEARTBEAT_TOPIC_PREFIX: Final = "__debezium-heartbeat."
ROUTER_KEY_FIELDS: Final = ("__dbz__physicalTableIdentifier", "__dbz__sourceIdentifier")
"""Key fields the routing transforms add by default (``key.field.name``)."""
_PHYSICAL, _SOURCE = ROUTER_KEY_FIELDS


def table_of_topic(topic: str) -> str | None:
    """``<prefix>.<db|schema>.<table>`` → ``<db|schema>.<table>``; None for other names.

    The prefix may hold dots; database and table names are taken to hold none.
    """
    parts = topic.rsplit(".", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return f"{parts[1]}.{parts[2]}"


def heartbeat_server(topic: str) -> str | None:
    """The connector (``topic.prefix``) whose default heartbeat topic this is, if it is one."""
    if topic.startswith(HEARTBEAT_TOPIC_PREFIX) and len(topic) > len(HEARTBEAT_TOPIC_PREFIX):
        return topic[len(HEARTBEAT_TOPIC_PREFIX) :]
    return None


def named_for(server: str, topic: str) -> bool:
    """Whether ``topic`` is, by its name, one of connector ``server``'s own topics.

    Its heartbeat topic, or exactly ``<server>.<db>.<table>``: with dotted prefixes a bare
    ``startswith`` would give ``prod.eu.dbserver1.inventory.stock`` to a connector named
    ``prod.eu`` as well.
    """
    if heartbeat_server(topic) == server:
        return True
    if not topic.startswith(server + "."):
        return False
    rest = topic[len(server) + 1 :].split(".")
    return len(rest) == 2 and all(rest)


def servers_named_in(servers: Iterable[str], topic: str) -> set[str]:
    """The connectors among ``servers`` whose names say they write ``topic``."""
    return {server for server in servers if named_for(server, topic)}


def routed_identity(key: Mapping[str, Any]) -> str | None:
    """The physical-table identifier a routing transform put into ``key``, if any."""
    for field in ROUTER_KEY_FIELDS:
        value = key.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def without_router_fields(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` without the routing transforms' fields: only the table's key columns."""
    if _PHYSICAL not in key and _SOURCE not in key:  # per change: no generator here
        return key
    return {name: value for name, value in key.items() if name not in ROUTER_KEY_FIELDS}
