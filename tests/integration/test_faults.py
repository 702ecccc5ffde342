"""Fault injection on real processes: the worker SIGKILLed under a steady stream, Redis
and the broker stopped and restarted, poison interleaved, duplicates re-delivered.

Every scenario ends with the same checks (:meth:`FaultRun.finish`): no stale key, no
lost write or invalidation, no resurrected deleted row, and the dead-letter topic holding
exactly the poison that was injected. ``cdc-cache inspect`` runs beside the worker in each
(on a MariaDB copy of the stream's table) and must see every inconsistency it measured
converge; a worker with an injected bug (no version gate) must drive its nines under the
objective. The session prints a table of the scenarios.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from cdc_cache.lineage.registry import source_key
from cdc_cache.sink.connection import connect, primaries
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer
from tests.integration.cache import cache_state
from tests.integration.faults import (
    APP_FILLED,
    AVAILABILITY,
    FaultRun,
    Stream,
    Verdict,
    durable_broker,
    fill_availability,
    verdict,
)
from tests.integration.memory_pressure import (
    Filler,
    VersionsGivenATtl,
    fill_until_refused,
    memory_limited,
)
from tests.integration.probes import metric
from tests.integration.scenario_table import NAME, ScenarioTable
from tests.integration.services import worker
from tests.integration.topics import unique_topic
from tests.integration.waiting import wait_until
from tests.workload import Message

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 4.0


@pytest.fixture(scope="session")
def scenario_table(pytestconfig: pytest.Config) -> ScenarioTable:
    table = pytestconfig.pluginmanager.get_plugin(NAME)
    assert isinstance(table, ScenarioTable)
    return table


@pytest.fixture
def runs() -> Iterator[list[FaultRun]]:
    """Runs to stop at teardown, whatever the test's outcome."""
    started: list[FaultRun] = []
    yield started
    for run in started:
        run.stop()


def test_worker_sigkilled_every_few_seconds_under_a_steady_stream(
    broker, mariadb, redis_target, tmp_path, runs, scenario_table
):
    name = "worker SIGKILL" + (", Cluster" if "cluster=true" in redis_target.url else "")
    run = FaultRun.start(
        name, tmp_path, broker, redis_target.url, redis_target.client, seed=41, workers=2,
        mariadb=mariadb,
    )  # fmt: skip
    runs.append(run)
    part = run.stream.part(3000, poison=12, redeliver=0.1)
    rnd = random.Random(41)
    kills = 0
    with ThreadPoolExecutor(1) as pool:
        producing = pool.submit(run.stream.produce, broker.bootstrap, part, 0.2)
        while not producing.done():
            wait_until(
                "worker consuming",
                lambda: sum(run.metrics().events.values()) > 0,
                30,
                shown=run.worker,
                interval=0.2,
            )
            time.sleep(rnd.uniform(0.5, 2.0))
            if producing.done():
                break
            run.worker.kill()
            kills += 1
            run.restart()
        producing.result()
    assert kills >= 3, "the stream ended before the worker was killed three times"
    run.finish(scenario_table, f"{kills} x SIGKILL (2 worker threads)")


def test_redis_outage_holds_changes_until_redis_returns(
    broker, mariadb, tmp_path, runs, scenario_table
):
    redis = RedisServer(tmp_path / "redis", free_port(), persist=True)  # data survives stop
    redis.start()
    try:
        run = FaultRun.start(
            "Redis outage", tmp_path, broker, redis.address(), connect(redis.address()), seed=42,
            mariadb=mariadb,
        )  # fmt: skip
        runs.append(run)
        run.stream.produce(broker.bootstrap, run.stream.part(600, poison=3))
        assert run.wait_consistent().clean, run.worker.tail()
        catch_up = [redis_outage(run, redis, kill_while_down=False)]
        catch_up.append(redis_outage(run, redis, kill_while_down=True))
        faults = (
            f"2 x Redis down {OUTAGE_S:.0f} s (2nd: worker SIGKILLed while down); "
            f"caught up in {' and '.join(f'{s:.1f}' for s in catch_up)} s"
        )
        run.finish(scenario_table, faults)
    finally:
        redis.stop()


def redis_outage(run: FaultRun, redis: RedisServer, *, kill_while_down: bool) -> float:
    """Stop Redis for OUTAGE_S while changes arrive; the seconds the cache took to catch up.

    Meanwhile the worker stays alive, retries (counted in its metrics) and applies nothing.
    Killed while down, it must restart from a snapshot that is not past unapplied changes.
    """
    before = run.metrics()
    redis.stop()
    down = time.monotonic()
    run.stream.produce(run.broker.bootstrap, run.stream.part(600, poison=3))
    wait_until(
        "retries in metrics",
        lambda: run.metrics().retries > before.retries,
        30,
        shown=run.worker,
        interval=0.2,
    )
    while time.monotonic() - down < OUTAGE_S:
        assert run.applied() == before.events["applied"], "applied while Redis was down"
        time.sleep(0.5)
    if kill_while_down:
        run.worker.kill()
    redis.start()
    run.client = connect(redis.address())
    back = time.monotonic()
    if kill_while_down:
        run.restart()
    assert run.wait_consistent().clean, run.worker.tail()
    return time.monotonic() - back


# tansu on S3 storage, stopped while an idempotent producer's write is in flight, can keep
# the producer's sequence without the record: the retry after the restart is answered as a
# duplicate and the acknowledged record is gone (README: Tests). Without idempotence the
# retry is written again, so the DLQ producer runs without it against this broker.
TANSU_S3_PRODUCER = {"CDC_CACHE_KAFKA_PRODUCER": '{"enable.idempotence": "false"}'}


def test_broker_restart_loses_nothing(
    mariadb, redis_server, redis_client, tmp_path, runs, scenario_table
):
    with durable_broker(tmp_path) as (_, durable):
        run = FaultRun.start(
            "broker restart", tmp_path, durable, redis_server.address(), redis_client, seed=43,
            mariadb=mariadb, env=TANSU_S3_PRODUCER,
        )  # fmt: skip
        runs.append(run)
        run.stream.produce(durable.bootstrap, run.stream.part(1000, poison=4), pace_s=0.05)
        durable.stop()
        with ThreadPoolExecutor(1) as pool:  # the connector keeps writing; the client queues
            producing = pool.submit(
                run.stream.produce, durable.bootstrap, run.stream.part(1000, poison=4)
            )
            deadline = time.monotonic() + OUTAGE_S
            while time.monotonic() < deadline:
                run.worker.check_alive()
                time.sleep(0.5)
            durable.start()
            producing.result()
        run.finish(scenario_table, f"broker down {OUTAGE_S:.0f} s, restarted on S3 storage")


def test_poison_interleaved_goes_to_the_dlq_and_the_stream_goes_on(
    broker, mariadb, redis_server, redis_client, tmp_path, runs, scenario_table
):
    run = FaultRun.start(
        "poison interleaved", tmp_path, broker, redis_server.address(), redis_client, seed=44,
        mariadb=mariadb,
    )  # fmt: skip
    runs.append(run)
    run.stream.produce(broker.bootstrap, run.stream.part(1500, poison=45))
    run.finish(scenario_table, "45 poison (undecodable, no_primary_key, render_failed)")


def test_duplicate_redelivery_changes_nothing(
    broker, mariadb, redis_server, redis_client, tmp_path, runs, scenario_table
):
    run = FaultRun.start(
        "duplicate re-delivery", tmp_path, broker, redis_server.address(), redis_client, seed=45,
        mariadb=mariadb,
    )  # fmt: skip
    runs.append(run)
    redeliver(run)
    run.finish(scenario_table, f"{run.stream.duplicates} duplicate changes")
    # every change delivered was processed exactly once, the duplicates as duplicates
    wait_until(
        "every delivered change counted",
        lambda: sum(run.metrics().events.values()) == run.stream.changes,
        30,
        shown=run.worker,
        interval=0.2,
    )
    assert run.metrics().events["duplicate"] > 0


def test_source_failover_to_a_lower_binlog_is_followed_across_sigkills(
    broker, mariadb, redis_target, tmp_path, runs, scenario_table
):
    """A replica promoted, the connector re-snapshotting it from binlog 1 (the old primary
    was at ~8), then the new server's changes, while the worker (2 threads: partitions
    reach the switch at different times) is SIGKILLed twice around the switch."""
    name = "source failover" + (", Cluster" if "cluster=true" in redis_target.url else "")
    run = FaultRun.start(
        name, tmp_path, broker, redis_target.url, redis_target.client, seed=47, workers=2,
        mariadb=mariadb,
    )  # fmt: skip
    runs.append(run)
    run.stream.produce(broker.bootstrap, run.stream.part(800, poison=3, redeliver=0.05))
    assert run.wait_consistent().clean, run.worker.tail()
    switch = run.stream.failover(server_id=2, binlog_file=1) + run.stream.part(800, poison=3)
    rnd = random.Random(47)
    kills = 0
    with ThreadPoolExecutor(1) as pool:
        producing = pool.submit(run.stream.produce, broker.bootstrap, switch, 0.2)
        for _ in range(2):
            time.sleep(rnd.uniform(0.5, 1.5))
            run.worker.kill()
            kills += 1
            run.restart()
        producing.result()
    run.finish(scenario_table, f"failover to binlog 1 (snapshot, new server), {kills} x SIGKILL")
    registry = run.client.hgetall(source_key("dbserver1"))
    assert registry[b"latest"] == registry[b"next:0"] == b"1", registry
    assert orjson.loads(registry[b"switch:1"])["from_epoch"] == 0


def test_without_lineage_detection_the_same_failover_leaves_stale_keys(
    broker, redis_server, redis_client, tmp_path, runs
):
    """The previous scenario with detection off: the snapshot and every later change sort
    below the old lineage and are skipped as stale (what an epoch bump by hand avoided)."""
    run = FaultRun.start(
        "failover, detection off", tmp_path, broker, redis_server.address(), redis_client,
        seed=47, env={"CDC_CACHE_LINEAGE_DETECTION": "false"},
    )  # fmt: skip
    runs.append(run)
    run.stream.produce(broker.bootstrap, run.stream.part(800))
    assert run.wait_consistent().clean, run.worker.tail()
    run.stream.produce(broker.bootstrap, run.stream.failover() + run.stream.part(800))
    wait_until(
        "every change processed",
        lambda: sum(run.metrics().events.values()) == run.stream.changes,
        30,
        shown=run.worker,
        interval=0.2,
    )
    result = verdict(run.client, run.stream)
    assert len(result.stale) > 50, result
    assert run.metrics().events["stale"] > 500


def redeliver(run: FaultRun, transactions: int = 1500) -> None:
    """Transactions, 30 % of them re-delivered among them, then their first half again."""
    part = run.stream.part(transactions, poison=6, redeliver=0.3)
    run.stream.produce(run.broker.bootstrap, part)
    run.stream.produce(run.broker.bootstrap, run.stream.again(part, 0.5))


def test_a_worker_without_its_version_gate_drives_the_nines_down_and_fires_the_alert(
    broker, mariadb, redis_server, redis_client, tmp_path, runs, scenario_table
):
    """A stream like the duplicates scenario's, applied by a worker whose gate lets an older
    change overwrite a newer one: the inspector's nines fall under the objective in both
    alert windows (the alert's condition), where the gated worker kept 100 %."""
    run = FaultRun.start(
        "injected bug: version gate off", tmp_path, broker, redis_server.address(),
        redis_client, seed=45, mariadb=mariadb, ungated=True,
        inspect={"--recheck-limit-s": "3", "--objective-nines": "3"},
    )  # fmt: skip
    runs.append(run)
    redeliver(run, 500)
    result, _, inspected = run.conclude(
        scenario_table, f"{run.stream.duplicates} duplicate changes", timeout=5
    )
    assert inspected is not None and run.inspection is not None
    assert result.stale, "the injected bug left no stale key: it proves nothing"
    assert inspected["unresolved"] > 0, inspected
    assert inspected["checks"]["stale"] > 0, inspected
    port = run.inspection.port
    objective = metric(port, "cdc_cache_inspect_objective_nines")
    assert objective == 3
    for window in ("5m", "1h"):  # CdcCacheConsistencyBelowObjective: both under the objective
        nines = metric(port, "cdc_cache_inspect_consistency_nines", {"window": window})
        assert nines < objective, (window, nines, inspected)
    shown = {entry["key"] for entry in inspected["latest_inconsistencies"]}
    assert shown & set(result.stale), (shown, result.stale)
    logged = [
        orjson.loads(line)
        for line in run.inspection.service.log.read_text().splitlines()
        if '"inconsistent cache key"' in line
    ]
    assert logged and {"key", "kind", "age_s", "table", "position"} <= logged[0].keys()


def test_the_consistency_check_sees_every_kind_of_damage(redis_client):
    stream = Stream(unique_topic(), seed=46)
    stream.part(400)
    expected = stream.workload.expected_cache()
    fates = stream.fates()
    assert {k for k, fate in fates.items() if fate == "row"} == set(expected)
    fill_availability(redis_client)
    for key, value in expected.items():  # what a correct worker leaves behind
        redis_client.set(key, orjson.dumps(value))
    for sku in stream.invalidated_skus():
        redis_client.delete(AVAILABILITY.format(sku=sku))
    assert verdict(redis_client, stream).clean

    kept, emptied = sorted(expected)[:2]
    moved = next(k for k, fate in fates.items() if fate == "moved")
    deleted = next(k for k, fate in fates.items() if fate == "deleted")
    refilled = AVAILABILITY.format(sku=min(stream.invalidated_skus()))
    redis_client.set(kept, orjson.dumps({**expected[kept], "qty": -1}))
    redis_client.delete(emptied)
    redis_client.set(moved, b'{"id": 0}')
    redis_client.set(deleted, b'{"id": 0}')
    redis_client.set(refilled, APP_FILLED)
    assert verdict(redis_client, stream) == Verdict(
        stale=[kept], missing=[emptied], lost=sorted([moved, refilled]), resurrected=[deleted]
    )


# --- Redis under memory pressure ----------------------------------------------------------

SUPPORTED = ["volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"]


@pytest.fixture
def small_redis(tmp_path) -> Iterator[RedisServer]:
    """A Redis of the test's own, for a small maxmemory and its policy."""
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


def memory_metric(run: FaultRun, name: str, **labels: str) -> float:
    return metric(run.metrics_port, f"cdc_cache_{name}", labels)


def killed_under_pressure(run: FaultRun, transactions: int) -> list[tuple[Message, str | None]]:
    """A stream with duplicates while the worker is SIGKILLed once, then a late stretch
    (its first half again, after the deletes it precedes); returns the stream's part."""
    part = run.stream.part(transactions, poison=3, redeliver=0.2)
    with ThreadPoolExecutor(1) as pool:
        producing = pool.submit(run.stream.produce, run.broker.bootstrap, part, 0.1)
        wait_until("worker applying", lambda: run.applied() > 0, 30, shown=run.worker, interval=0.2)
        run.worker.kill()
        run.restart()
        producing.result()
    run.stream.produce(run.broker.bootstrap, run.stream.again(part, 0.5))
    return part


def late_once_more(run: FaultRun, part: list[tuple[Message, str | None]]) -> str:
    """The late stretch again once the pressure is lifted: a version lost meanwhile now
    lets it write, and no further eviction can hide what it wrote."""
    run.stream.produce(run.broker.bootstrap, run.stream.again(part, 0.5))
    return f"{run.stream.duplicates} duplicates, SIGKILL, 2 late stretches"


@pytest.mark.parametrize("policy", SUPPORTED)
def test_eviction_under_memory_pressure_takes_values_never_versions(
    policy, broker, small_redis, tmp_path, runs, scenario_table
):
    client = connect(small_redis.address())
    with memory_limited(client, policy, headroom=2 << 20), Filler(client) as filler:
        run = FaultRun.start(
            f"eviction, {policy}", tmp_path, broker, small_redis.address(), client, seed=51
        )
        runs.append(run)
        part = killed_under_pressure(run, 800)
        run.wait_settled()
        wait_until(
            "evictions seen by the worker",
            lambda: memory_metric(run, "redis_evictions_total") > 0,
            30,
            shown=run.worker,
            interval=0.2,
        )
        evicted = memory_metric(run, "redis_evictions_total")
        missing = len(verdict(client, run.stream).missing)
    assert filler.written > 0
    assert missing, "eviction took no cache entry: the scenario proves nothing"
    faults = f"{policy} 2 MiB, app writes, {evicted:.0f} evicted; {late_once_more(run, part)}"
    run.finish(scenario_table, faults, settle="versions")


def test_the_eviction_scenario_fails_when_versions_can_be_evicted(
    broker, small_redis, tmp_path, runs, scenario_table
):
    """The control: version buckets given a TTL, as the previous release's version keys
    had, are evicted under the same pressure, and the late stretch then leaves stale or
    resurrected rows. The scenarios above would fail the same way."""
    client = connect(small_redis.address())
    with (
        memory_limited(client, "volatile-ttl", headroom=2 << 20),
        Filler(client),
        VersionsGivenATtl(client),
    ):
        run = FaultRun.start(
            "control: versions with a TTL", tmp_path, broker, small_redis.address(), client,
            seed=51,
        )  # fmt: skip
        runs.append(run)
        part = killed_under_pressure(run, 800)
        run.wait_drained()
    late_once_more(run, part)
    run.wait_drained()
    damage = verdict(client, run.stream)
    assert damage.stale or damage.resurrected, damage


def test_noeviction_filling_up_still_lands_every_invalidation(
    broker, small_redis, tmp_path, runs, scenario_table
):
    client = connect(small_redis.address())
    with memory_limited(client, "noeviction", headroom=2 << 20):
        run = FaultRun.start(
            "noeviction filling up", tmp_path, broker, small_redis.address(), client, seed=52,
            env={"CDC_CACHE_MODE_WINDOW_S": "2", "CDC_CACHE_FALLBACK_TTL_S": "5"},
        )  # fmt: skip
        runs.append(run)
        run.stream.produce(broker.bootstrap, run.stream.part(300))
        run.wait_settled()
        fill_until_refused(client, ttl_ms=20_000)  # full: Redis refuses writes for memory
        part = run.stream.part(600, poison=3, redeliver=0.2)
        with ThreadPoolExecutor(1) as pool:
            producing = pool.submit(run.stream.produce, broker.bootstrap, part, 0.1)
            wait_until(
                "writes refused for memory, ttl mode held with cause redis_oom",
                lambda: (
                    memory_metric(run, "redis_oom_refusals_total") > 0
                    and memory_metric(run, "mode_holds", cause="redis_oom") == 1
                ),
                30,
                shown=run.worker,
                interval=0.2,
            )
            run.worker.kill()
            run.restart()  # starts while Redis is full
            producing.result()
        run.stream.produce(broker.bootstrap, run.stream.again(part, 0.5))
        run.wait_settled()
        wait_until(
            "the redis_oom hold cleared once the application's keys expired",
            lambda: memory_metric(run, "mode_holds", cause="redis_oom") == 0,
            60,
            shown=run.worker,
            interval=0.2,
        )
        faults = f"noeviction full, restarted full; {late_once_more(run, part)}"
        run.finish(scenario_table, faults, settle="versions")


def test_allkeys_policy_with_invalidate_only_writes_no_value(
    broker, small_redis, tmp_path, runs, scenario_table
):
    client = connect(small_redis.address())
    with memory_limited(client, "allkeys-lru", headroom=2 << 20), Filler(client):
        run = FaultRun.start(
            "allkeys-lru, invalidate_only", tmp_path, broker, small_redis.address(), client,
            seed=53, env={"CDC_CACHE_EVICTION_FALLBACK": "invalidate_only"},
        )  # fmt: skip
        runs.append(run)
        part = killed_under_pressure(run, 600)
        run.wait_drained()
    # back on noeviction: still invalidations only for a version lifetime, since versions
    # evicted meanwhile cannot be told from versions never written
    faults = f"allkeys-lru 2 MiB, then noeviction; {late_once_more(run, part)}"
    result = run.finish(scenario_table, faults, settle="drained")
    assert memory_metric(run, "invalidate_only") == 1
    assert not cache_state(client), "a value was written although versions may be evicted"
    assert result.missing


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_an_unsupported_eviction_policy_is_refused_at_start(policy, broker, redis_target, tmp_path):
    node = primaries(redis_target.client)[-1]  # one primary of a cluster is enough
    topic = unique_topic()
    broker.create_topics({topic: 1, f"{topic.split('.')[0]}.dlq": 1})
    service = worker(
        tmp_path, broker.bootstrap, redis_target.url, [topic],
        env={"CDC_CACHE_DLQ_TOPIC": f"{topic.split('.')[0]}.dlq"},
    )  # fmt: skip
    node.config_set("maxmemory-policy", policy)
    node.config_set("maxmemory", str(1 << 30))
    try:
        service.start()
        assert service.proc is not None
        assert service.proc.wait(60) == 2
    finally:
        node.config_set("maxmemory", "0")
        node.config_set("maxmemory-policy", "noeviction")
        service.stop()
    message = service.tail()
    assert f"has maxmemory-policy {policy}" in message, message
    assert "volatile-lru" in message and "eviction_fallback: invalidate_only" in message
