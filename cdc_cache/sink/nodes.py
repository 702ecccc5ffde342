"""Which primary serves which version bucket.

One group on a single server, one per primary on a Cluster, for work that visits every
slot node by node (a pipeline each).
"""

from __future__ import annotations

from collections import defaultdict

from redis import Redis, RedisCluster

from cdc_cache.core.keys import ns
from cdc_cache.sink.connection import Client


def buckets_by_node(client: Client) -> list[tuple[Redis[bytes], list[str]]]:
    """Every version bucket name, grouped by the primary that serves it.

    On a Cluster, from a fresh slot map: these calls go to each node directly, so a slot
    that moved would answer MOVED to every retry of a map the client never corrected.
    """
    names = list(ns().all_version_buckets())
    if not isinstance(client, RedisCluster):
        return [(client, names)]
    client.nodes_manager.initialize()
    grouped: dict[str, list[str]] = defaultdict(list)
    nodes = {}
    for name in names:
        node = client.get_node_from_key(name)
        if node is not None:
            grouped[node.name].append(name)
            nodes[node.name] = node
    return [(client.get_redis_connection(nodes[n]), grouped[n]) for n in sorted(grouped)]
