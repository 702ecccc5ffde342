"""Redis Cluster slots moving under a running client: resharding, a primary added.

A cluster client's slot map learns of a move only when one of its keyed commands meets
it. The work that visits every primary or every version bucket directly (a TRUNCATE's
record and SCAN, the fallback TTL given to cached keys) goes to the nodes themselves, so
it must not trust a map that may be stale: a primary the map does not know would keep
its keys, and a bucket whose slot moved would answer MOVED to every retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from redis import Redis

from cdc_cache.core.keys import key_slot
from cdc_cache.core.positions import SourcePosition
from cdc_cache.fallback.shortening import shorten_ttls
from cdc_cache.plan.cache_ops import InvalidatePrefix, SetRow, Truncated, ValueFormat
from cdc_cache.sink.apply import Outcome, RedisApplier
from cdc_cache.sink.connection import connect
from cdc_cache.sink.version_store import VersionSweeper
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisClusterServers
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "db.items"
TTL, TOMBSTONE = 3_600_000, 3_600_000


@dataclass(frozen=True)
class Grown:
    """A fresh 3-primary cluster, and a spare cluster node (port, bus port) not in it yet."""

    servers: RedisClusterServers
    spare: int
    spare_bus: int

    def add_spare(self) -> None:
        ports = self.servers.ports
        _node(ports[0]).execute_command("CLUSTER", "MEET", "127.0.0.1", self.spare, self.spare_bus)
        wait_until(
            "every node knowing the spare",
            lambda: all(len(_nodes(port)) == len(ports) + 1 for port in [*ports, self.spare]),
        )


@pytest.fixture
def cluster(tmp_path) -> Iterator[Grown]:
    ports = [free_port() for _ in range(4)]
    buses = [free_port() for _ in ports]
    servers = RedisClusterServers(tmp_path, ports[:3], buses[:3])
    spare = RedisClusterServers(tmp_path, ports, buses).process(ports[3])
    try:
        servers.start()
        spare.start(lambda: bool(_node(ports[3]).ping()))
        yield Grown(servers, ports[3], buses[3])
    finally:
        spare.stop()
        servers.stop()


def _node(port: int) -> Redis:
    return Redis(port=port, socket_timeout=5)


def _id(port: int) -> str:
    return _node(port).execute_command("CLUSTER", "MYID").decode()


def _nodes(port: int) -> list[list[str]]:
    """CLUSTER NODES as ``port`` sees it, one list of fields per node."""
    text = _node(port).execute_command("CLUSTER", "NODES").decode()
    return [line.split() for line in text.splitlines()]


def _owner(port: int, slot: int) -> str | None:
    """The id of the node ``port`` believes serves ``slot``."""
    for fields in _nodes(port):
        for span in fields[8:]:
            if span.startswith("["):  # a migration in progress, not an owner
                continue
            low, _, high = span.partition("-")
            if int(low) <= slot <= int(high or low):
                return fields[0]
    return None


def _move(slot: int, target: int, ports: list[int]) -> None:
    """Move the empty ``slot`` to the node on ``target``, as a resharding tool does."""
    source = next(port for port in ports if _id(port) == _owner(port, slot))
    target_id = _id(target)
    _node(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _id(source))
    _node(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    for port in [target, source, *(p for p in ports if p not in (source, target))]:
        _node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    wait_until(
        f"every node serving slot {slot} from {target}, the cluster ok",
        lambda: all(_owner(port, slot) == target_id and _ok(port) for port in ports),
    )


def _ok(port: int) -> bool:
    return b"cluster_state:ok" in _node(port).execute_command("CLUSTER", "INFO")


def pos(n: int) -> SourcePosition:
    return SourcePosition(0, 7, n, 0)


def set_row(key: str, n: int) -> SetRow:
    return SetRow(key, pos(n), f'{{"v":{n}}}'.encode(), ValueFormat.JSON, TTL, TOMBSTONE, TABLE)


def test_the_fallback_ttl_reaches_the_keys_of_a_primary_added_since_the_client_mapped_slots(
    cluster,
):
    client = connect(cluster.servers.address())
    client.set("warm", b"1")  # the client maps the three primaries
    cluster.add_spare()
    _move(key_slot("item:1"), cluster.spare, [*cluster.servers.ports, cluster.spare])
    _node(cluster.spare).set("item:1", b"{}", px=TTL)  # cached on the new primary

    assert shorten_ttls(client, ["item:"], 1_000, keys_per_s=1e9) == 1
    assert 0 < _node(cluster.spare).pttl("item:1") <= 1_000


def test_a_truncate_is_recorded_in_the_bucket_of_a_slot_moved_since_the_client_mapped_it(
    cluster,
):
    ports = cluster.servers.ports
    client = connect(cluster.servers.address())
    client.set("warm", b"1")  # the client maps the slots
    applier = RedisApplier(client)
    slot = key_slot("item:1")
    elsewhere = next(p for p in ports if _id(p) != _owner(p, slot))
    _move(slot, elsewhere, ports)

    VersionSweeper(client).sweep()  # visits every bucket, the moved slot's too
    applier.apply([InvalidatePrefix("item:", TABLE, pos(50), TOMBSTONE, Truncated())])

    # the late older change meets the TRUNCATE's record in its slot's bucket
    assert applier.apply([set_row("item:1", 40)]).outcomes == (Outcome.STALE,)
    assert client.exists("item:1") == 0
