"""Waiting for replicas after each batch, on real replicated Redis (Sentinel and Cluster).

A batch returns from the writer only once the required replicas acknowledged it; a
replica cut off holds the writer (and the cache in ttl mode) until it is back; a failover
between a batch's writes and its wait applies the batch again on the new primary (its
tag and link writes too); a failed change is dead-lettered only once the replicas hold the deletes of its keys.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from redis import Redis

from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.keys import ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.core.retry import Backoff, retry_forever
from cdc_cache.dlq.entries import Failure
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.cache_ops import DeleteKey, Notify, SetRow, ValueFormat
from cdc_cache.plan.dependencies import plan_dependencies
from cdc_cache.plan.route import Planned, Rejected, Routed, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import Client, connect
from cdc_cache.sink.encoding import version_of
from cdc_cache.sink.failover import PrimaryRegistry
from cdc_cache.sink.replica_wait import ReplicaWait
from cdc_cache.sink.scripts import accepts_writes
from cdc_cache.sink.tags import TagStore, member
from cdc_cache.sink.version_store import stored_version
from cdc_cache.sink.writer import CacheWriter, EventOutcome
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisClusterServers
from tests.integration.cache import cache_state
from tests.integration.memory_pressure import out_of_memory
from tests.integration.waiting import wait_until
from tests.unit.test_dependencies import CATALOG
from tests.workload import RULES_YAML, Workload

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RULES = parse_rules(RULES_YAML)
CATALOG_RULES = parse_rules(CATALOG)
FAST = Backoff(initial=0.05, maximum=0.5)


def records(workload: Workload, transactions: int) -> list[SourceRecord]:
    messages = (m for tx in workload.transactions(transactions) for m in tx)
    return [SourceRecord(m.topic, 0, n, m.key, m.value) for n, m in enumerate(messages)]


def planned(workload: Workload, transactions: int) -> list[Planned]:
    routed = (route(record, RULES) for record in records(workload, transactions))
    return [item for item in routed if isinstance(item, Planned)]


def writer_for(client: Client, holds: Holds, registry: PrimaryRegistry) -> CacheWriter:
    wait = ReplicaWait(client, registry, holds, replicas=1, timeout_ms=200).start()
    return CacheWriter(RedisApplier(client), FAST, replicas=wait)


class Background:
    """``writer.write(items)`` in a thread, to watch it wait."""

    def __init__(self, writer: CacheWriter, items: list[Routed]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(writer, items), daemon=True)
        self.thread.start()

    def _run(self, writer: CacheWriter, items: list[Routed]) -> None:
        try:
            writer.write(items)
        except BaseException as exc:  # reported by done()
            self.error = exc

    def done(self, timeout: float = 0.0) -> bool:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return not self.thread.is_alive()


def replication_held(holds: Holds) -> bool:
    return any(hold.cause is Cause.REDIS_REPLICATION for hold in holds.active())


def failovers(outcome: str) -> float:
    value = REGISTRY.get_sample_value("cdc_cache_redis_failovers_total", {"outcome": outcome})
    return value or 0.0


def test_a_batch_waits_for_a_cut_off_replica_with_the_cache_held_in_ttl(replicated_redis):
    group = replicated_redis
    holds, workload = Holds(), Workload(seed=31)
    writer = writer_for(connect(group.url()), holds, PrimaryRegistry(tracked=True))
    writer.write(planned(workload, 50))
    group.detach_replica()

    second = Background(writer, planned(workload, 50))
    wait_until("the redis_replication hold", lambda: replication_held(holds))
    assert not second.done(1.0), "the batch returned before its replica had it"
    group.reattach_replica()

    assert second.done(30)
    assert not holds.active()
    replica = group.client(group.replica)
    wait_until("the replica's copy", lambda: cache_state(replica) == workload.expected_cache())


def test_a_failover_between_writes_and_wait_applies_the_batch_again(replicated_redis):
    group = replicated_redis
    holds, workload = Holds(), Workload(seed=32)
    writer = writer_for(connect(group.url()), holds, PrimaryRegistry(tracked=True))
    writer.write(planned(workload, 50))
    complete_before = failovers("complete")
    group.detach_replica()
    second = Background(writer, planned(workload, 50))  # written to the primary alone
    wait_until("the redis_replication hold", lambda: replication_held(holds))

    group.fail_over()  # the promoted replica never got the second batch
    assert cache_state(group.client(group.primary)) != workload.expected_cache()
    group.rejoin_old_primary()  # the new primary gets a replica to wait for

    assert second.done(60)
    assert cache_state(group.client(group.primary)) == workload.expected_cache()
    assert failovers("complete") == complete_before + 1
    assert not holds.active()


def join_row(product: int, tag: int, n: int) -> Planned:
    """A join row's insert: link ops and a delete, no key op of its own."""
    row = {"product_id": product, "tag_id": tag}
    event = ChangeEvent(
        "catalog.product_tags", Op.CREATE, None, row, row, SourcePosition(0, 1, n, 0), 0
    )
    record = SourceRecord("dbz.catalog.product_tags", 0, n, None, b"")
    return Planned(record, event, (), tuple(plan_dependencies(event, CATALOG_RULES)))


def test_a_batchs_links_wait_for_the_replica_and_survive_a_failover(replicated_redis):
    group = replicated_redis
    holds = Holds()
    client = connect(group.url())
    wait = ReplicaWait(client, PrimaryRegistry(tracked=True), holds, replicas=1, timeout_ms=200)
    applier = RedisApplier(client)
    writer = CacheWriter(applier, FAST, replicas=wait.start(), tags=TagStore(client, applier))
    writer.write([join_row(1, 3, 1)])
    group.detach_replica()

    second = Background(writer, [join_row(2, 3, 2)])  # written to the primary alone
    wait_until("the redis_replication hold", lambda: replication_held(holds))
    assert not second.done(1.0), "the links returned before the replica had them"
    group.fail_over()  # the promoted replica never got the second link
    group.rejoin_old_primary()

    assert second.done(60)
    tag = group.client(group.primary).hgetall(ns().tag_key("catalog.tags:3"))
    linked = {member(f"product:{p}:page", f"catalog.product_tags:{p}:3").encode() for p in (1, 2)}
    assert linked <= tag.keys(), tag
    assert not holds.active()


def test_a_failed_change_is_dead_lettered_only_once_the_replica_holds_its_deletes(
    replicated_redis,
):
    group = replicated_redis
    client, holds, workload = connect(group.url()), Holds(), Workload(seed=35)
    dead: list[Failure] = []
    wait = ReplicaWait(client, PrimaryRegistry(tracked=True), holds, replicas=1, timeout_ms=200)
    writer = CacheWriter(RedisApplier(client), FAST, reject=dead.extend, replicas=wait.start())
    unguarded = CacheWriter(RedisApplier(client), FAST, reject=dead.extend)
    writer.write(planned(workload, 50))
    replica = group.client(group.replica)
    wait_until("the replica's copy", lambda: cache_state(replica) == workload.expected_cache())

    def too_large(transactions: int) -> list[Routed]:
        """The next changes, each rejected (value_too_large): only their deletes are written."""
        routed = [route(record, RULES, 0, 1) for record in records(workload, transactions)]
        return [item for item in routed if isinstance(item, Rejected)]

    group.detach_replica()
    # Without the wait, the failures are dead-lettered while the replica serves their rows.
    unguarded.write(first := too_large(10))
    keys = [delete.key for item in first for delete in item.invalidation.deletes]
    assert len(dead) == len(first) and client.exists(*keys) == 0 and replica.exists(*keys) > 0

    dead.clear()
    second = too_large(10)
    keys = [delete.key for item in second for delete in item.invalidation.deletes]
    blocked = Background(writer, second)
    wait_until("the redis_replication hold", lambda: replication_held(holds))
    assert not blocked.done(1.0)
    assert not dead, "dead-lettered before the replica had the deletes"
    assert replica.exists(*keys) > 0
    group.reattach_replica()

    assert blocked.done(30)
    assert len(dead) == len(second)
    assert all(failure.invalidation is not None for failure in dead)
    assert replica.exists(*keys) == 0
    assert not holds.active()


# --- Redis Cluster: 3 primaries with a replica each -----------------------------------------


@pytest.fixture
def replicated_cluster(tmp_path) -> Iterator[RedisClusterServers]:
    yield from _cluster(tmp_path, replicas=1)


@pytest.fixture
def twice_replicated_cluster(tmp_path) -> Iterator[RedisClusterServers]:
    """Two replicas per primary: one left to wait for once the other was promoted."""
    yield from _cluster(tmp_path, replicas=2)


def _cluster(tmp_path, *, replicas: int) -> Iterator[RedisClusterServers]:
    ports = [free_port() for _ in range(3 * (replicas + 1))]
    cluster = RedisClusterServers(
        tmp_path / "cluster", ports, [free_port() for _ in ports], replicas=replicas
    )
    try:
        cluster.start()
        wait_until(
            "replicas", lambda: all(_replica_of(cluster, p) for p in _primary_ports(cluster))
        )
        yield cluster
    finally:
        for port in ports:  # a test may leave a node paused
            pid = cluster.process(port).pid()
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
        cluster.stop()


def _info(port: int) -> dict:
    return dict(Redis(port=port, socket_timeout=2).info("replication"))


def _primary_ports(cluster: RedisClusterServers) -> list[int]:
    return [p for p in cluster.ports if _info(p).get("role") == "master"]


def _replica_of(cluster: RedisClusterServers, primary: int) -> int | None:
    entry = _info(primary).get("slave0")
    return int(entry["port"]) if entry and entry.get("state") == "online" else None


def _split(client: Client, port: int, items: list[Planned]) -> tuple[list, list]:
    """The items with every key on the primary at ``port``, and those with none there."""
    on = [[client.get_node_from_key(op.key).port == port for op in item.ops] for item in items]
    there = [item for item, where in zip(items, on, strict=True) if where and all(where)]
    elsewhere = [item for item, where in zip(items, on, strict=True) if where and not any(where)]
    return there, elsewhere


def test_on_cluster_a_batch_waits_only_for_the_replicas_of_the_primaries_it_touched(
    replicated_cluster,
):
    cluster = replicated_cluster
    client, holds = connect(cluster.address()), Holds()
    writer = writer_for(client, holds, PrimaryRegistry(tracked=True))
    items = planned(Workload(seed=33), 400)
    paused_primary = _primary_ports(cluster)[0]
    replica = _replica_of(cluster, paused_primary)
    assert replica is not None
    there, elsewhere = _split(client, paused_primary, items)
    assert elsewhere and there
    os.kill(cluster.process(replica).pid() or 0, signal.SIGSTOP)
    try:
        writer.write(elsewhere)  # returns: none of its primaries lost a replica
        assert not holds.active()
        blocked = Background(writer, there)
        wait_until("the redis_replication hold", lambda: replication_held(holds))
        assert f"127.0.0.1:{paused_primary}" in holds.active()[0].reason
        assert not blocked.done(1.0)
    finally:
        os.kill(cluster.process(replica).pid() or 0, signal.SIGCONT)
    assert blocked.done(30)
    assert not holds.active()


def test_on_cluster_a_batchs_notifications_wait_for_the_replicas_of_their_channels_primary(
    replicated_cluster,
):
    """The relay appends them to their channels' streams, in other slots than their rows':
    a failover there before its replicas had them would lose notifications whose outbox
    entries are already trimmed, so the batch waits for those replicas too."""
    cluster = replicated_cluster
    client, holds = connect(cluster.address()), Holds()
    wait = ReplicaWait(client, PrimaryRegistry(tracked=True), holds, replicas=1, timeout_ms=200)
    wait.start()

    def port_of(key: str) -> int:
        return int(client.get_node_from_key(key).port)

    paused_primary = next(p for p in _primary_ports(cluster) if p != port_of(ns().channels))
    replica = _replica_of(cluster, paused_primary)
    assert replica is not None
    names = (f"items:{n}" for n in range(10_000))
    channel = next(c for c in names if port_of(ns().stream_key(c)) == paused_primary)
    key = next(k for k in (f"item:{n}" for n in range(10_000)) if port_of(k) != paused_primary)
    row = SetRow(key, SourcePosition(0, 1, 1, 0), b"{}", ValueFormat.JSON, 60_000, 60_000, "t")
    ops = [row, Notify(channel, b'{"n":1}', 100)]
    applier = RedisApplier(client)
    step = wait.guarded(lambda: applier.apply(ops), ops)
    os.kill(cluster.process(replica).pid() or 0, signal.SIGSTOP)
    try:
        waiting = threading.Thread(target=step, daemon=True)
        waiting.start()
        waiting.join(2.0)
        assert waiting.is_alive(), "returned before the channel's replicas had the notification"
        assert replication_held(holds)
        assert f"127.0.0.1:{paused_primary}" in holds.active()[0].reason
    finally:
        os.kill(cluster.process(replica).pid() or 0, signal.SIGCONT)
    waiting.join(30)
    assert not waiting.is_alive()
    assert client.xlen(ns().stream_key(channel)) == 1


def test_on_cluster_a_promoted_replica_is_recognised_and_the_batch_written_again(
    replicated_cluster,
):
    cluster = replicated_cluster
    client, holds = connect(cluster.address()), Holds()
    writer = writer_for(client, holds, PrimaryRegistry(tracked=True))
    workload = Workload(seed=34)
    writer.write(planned(workload, 100))
    complete_before = failovers("complete")
    victim = _primary_ports(cluster)[0]
    promoted = _replica_of(cluster, victim)

    cluster.process(victim).kill()
    wait_until("the cluster promoting the replica", lambda: _info(promoted).get("role") == "master")
    second = Background(writer, planned(workload, 100))
    wait_until("the second batch's wait", lambda: replication_held(holds) or second.done())
    cluster.process(victim).start(lambda: bool(_info(victim)), 30)  # back, as a replica

    assert second.done(60)
    assert cache_state(client) == workload.expected_cache()
    assert failovers("complete") == complete_before + 1


def test_on_cluster_a_primary_lost_between_the_writes_and_their_wait_is_not_waited_for(
    twice_replicated_cluster,
):
    """Its replica took its slots: the batch is applied there again and waited for there,
    while the lost primary stays down (it may never come back at its address)."""
    cluster = twice_replicated_cluster
    client, holds = connect(cluster.address()), Holds()
    wait = ReplicaWait(client, PrimaryRegistry(tracked=True), holds, replicas=1, timeout_ms=200)
    wait.start()
    applier = RedisApplier(client)
    workload = Workload(seed=35)
    ops = [op for item in planned(workload, 100) for op in item.ops]
    victim = _primary_ports(cluster)[0]
    assert any(client.get_node_from_key(op.key).port == victim for op in ops)
    switches = failovers("incomplete"), failovers("complete")
    lost: list[int] = []

    def apply_then_lose_the_primary() -> object:
        result = applier.apply(ops)
        if not lost:  # the writes made, their wait not yet asked
            lost.append(victim)
            cluster.process(victim).kill()
            wait_until("a replica of the lost primary promoted", lambda: _promoted(cluster, victim))
        return result

    step = wait.guarded(apply_then_lose_the_primary, ops)
    waiting = threading.Thread(target=retry_forever, args=(step,), kwargs={"backoff": FAST})
    waiting.daemon = True
    waiting.start()
    waiting.join(60)

    assert not waiting.is_alive(), "still waiting for the lost primary"
    assert cache_state(client) == workload.expected_cache()
    # the replica promoted held every confirmed write: one complete switch, nothing more
    assert (failovers("incomplete"), failovers("complete")) == (switches[0], switches[1] + 1)


def test_on_cluster_a_wait_the_client_sent_elsewhere_counts_for_nothing(replicated_cluster):
    """A primary's connection times out during the wait: the cluster client sends its
    commands again, WAIT and INFO (which name no key) to its default node, another primary.
    Its answers are not the primary's: taken for them, they showed a failover that never
    happened and acknowledged writes the primary's replicas may not hold."""
    cluster = replicated_cluster
    client, holds = connect(cluster.address() + "&socket_timeout=0.5"), Holds()
    wait = ReplicaWait(client, PrimaryRegistry(tracked=True), holds, replicas=1, timeout_ms=200)
    wait.start()
    applier = RedisApplier(client)
    slow = next(p for p in _primary_ports(cluster) if p != client.get_default_node().port)
    workload = Workload(seed=36)
    ops = [op for item in planned(workload, 50) for op in item.ops]
    assert any(client.get_node_from_key(op.key).port == slow for op in ops)
    switches = failovers("incomplete"), failovers("complete")
    paused: list[int] = []

    def apply_then_pause_a_primary() -> object:
        result = applier.apply(ops)
        if not paused:  # the wait's first read times out (0.5 s), its commands sent again succeed
            paused.append(slow)
            Redis(port=slow).execute_command("CLIENT", "PAUSE", 700, "ALL")
        return result

    retry_forever(wait.guarded(apply_then_pause_a_primary, ops), backoff=FAST)

    assert (failovers("incomplete"), failovers("complete")) == switches
    assert cache_state(client) == workload.expected_cache()


def _promoted(cluster: RedisClusterServers, lost: int) -> bool:
    """A replica of the killed primary took its place: three primaries answer again."""
    alive = [port for port in cluster.ports if port != lost]
    return sum(_info(port).get("role") == "master" for port in alive) == 3


def test_a_batch_while_the_primary_is_out_of_memory_lands_its_invalidations_and_its_wait(
    replicated_redis,
):
    group = replicated_redis
    holds, workload = Holds(), Workload(seed=33)
    client = connect(group.url())
    writer = writer_for(client, holds, PrimaryRegistry(tracked=True))
    writer.write(planned(workload, 50))
    primary = group.client(group.primary)
    with out_of_memory(client, [primary]):
        assert not accepts_writes(primary)  # Redis refuses the plain apply script
        batch = planned(workload, 50)
        outcomes: list[EventOutcome] = []  # invalidations, and the wait for them, still land
        writing = threading.Thread(target=lambda: outcomes.extend(writer.write(batch)), daemon=True)
        writing.start()
        writing.join(30)
        assert not writing.is_alive(), "the batch stalled while Redis was full"
    assert len(outcomes) == len(batch), "changes were set aside instead of applied"
    applied = {op.key: version_of(op) for item in batch for op in item.ops
               if isinstance(op, SetRow | DeleteKey)}  # fmt: skip
    held = {key: stored_version(client, key) for key in applied}
    assert {k: v[:-1] for k, v in applied.items()} == {k: (v or "")[:-1] for k, v in held.items()}
    expected = workload.expected_cache()
    assert all(expected.get(key) == value for key, value in cache_state(client).items())
