"""What one op of the apply script costs on each side: the worker's encoding, Redis's script.

Plans the throughput workload's changes (``bench/workload.py``, the same rules and
generator) into key ops, cuts them into batches as the sink hands them to the writer, and
measures on the same ops:

* **worker**: CPU µs per op (this thread's) to encode the batches' script calls
  (``encoding.calls``) and pack each EVALSHA as redis-py's hiredis serializer does before
  sending it: the writer thread's own Python per op, without the round trip;
* **Redis**: µs per op of the apply script (``INFO commandstats``, ``cmdstat_evalsha``:
  time in the command, which a busy machine stretches) and Redis's main-thread CPU µs per
  op (``INFO cpu``, less so), the calls pipelined into a fresh Redis, each round on an
  emptied one;
* **accounting**: CPU µs per change of the writer's accounting of an applied batch
  (``CacheWriter._account``: outcome counters, latencies, per-change outcomes).

    .venv/bin/python bench/apply_args.py [--events 20000] [--batch 1000] [--rounds 9]

Single-threaded; the best round counts on either side (a load that comes and goes on a
shared machine only slows rounds down; compare runs made in turn, alternately). To
compare two checkouts, run this file against each one's package:
``PYTHONPATH=/other/checkout .venv/bin/python bench/apply_args.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from redis import Redis

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: see above

from bench.workload import RULES_YAML, Generator
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.retry import Backoff
from cdc_cache.plan.cache_ops import KeyOp, Notify
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.encoding import Outcome, calls
from cdc_cache.sink.scripts import apply_script
from cdc_cache.sink.writer import CacheWriter
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer


def planned(events: int) -> list[Planned]:
    """The changes the worker plans for ``events`` changes of the throughput workload."""
    rules = parse_rules(RULES_YAML, "bench-rules.yaml")
    found = []
    for message in Generator(prefix="args", seed=7).messages(events):
        routed = route(SourceRecord(message.topic, 0, 0, message.key, message.value), rules)
        if isinstance(routed, Planned):
            found.append(routed)
    return found


def key_ops(changes: list[Planned]) -> list[KeyOp | Notify]:
    return [op for change in changes for op in change.ops if isinstance(op, KeyOp | Notify)]


def account_us_per_change(changes: list[Planned], redis: Redis[bytes], rounds: int) -> float:
    """The writer's accounting of applied batches (outcome metrics, per-change outcomes)."""
    writer = CacheWriter(RedisApplier(redis), Backoff())
    batches = [changes[s : s + 1000] for s in range(0, len(changes), 1000)]
    outcomes = [[Outcome.APPLIED] * len(key_ops(batch)) for batch in batches]
    sent = [[op for change in batch for op in change.ops] for batch in batches]
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for batch, ops, results in zip(batches, sent, outcomes, strict=True):
            writer._account(batch, ops, results)
        best = min(best, time.thread_time() - started)
    return best / len(changes) * 1e6


def encode(batches: list[list[KeyOp | Notify]], sha: str, redis: Redis[bytes]) -> list[Any]:
    """Every batch's calls, packed as redis-py sends them."""
    connection = redis.connection_pool.get_connection()
    try:
        return [
            connection.pack_command("EVALSHA", sha, len(c.keys), *c.keys, *c.args)
            for batch in batches
            for c in calls(batch, range(len(batch)))
        ]
    finally:
        redis.connection_pool.release(connection)


def worker_us_per_op(
    batches: list[list[KeyOp | Notify]], sha: str, redis: Redis[bytes], rounds: int
) -> float:
    ops = sum(len(b) for b in batches)
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        encode(batches, sha, redis)
        best = min(best, time.thread_time() - started)
    return best / ops * 1e6


def redis_us_per_op(
    packed: list[Any], ops: int, redis: Redis[bytes], rounds: int
) -> dict[str, float]:
    per_op: list[float] = []
    per_call: list[float] = []
    cpu_per_op: list[float] = []
    for _ in range(rounds):
        redis.flushall()
        redis.config_resetstat()
        cpu = _main_thread_cpu(redis)
        connection = redis.connection_pool.get_connection()
        try:
            for start in range(0, len(packed), 2):
                group = packed[start : start + 2]
                connection.send_packed_command([part for command in group for part in command])
                for _ in group:
                    connection.read_response()
        finally:
            redis.connection_pool.release(connection)
        cpu_per_op.append((_main_thread_cpu(redis) - cpu) / ops * 1e6)
        stats = redis.info("commandstats")["cmdstat_evalsha"]
        per_op.append(stats["usec"] / ops)
        per_call.append(stats["usec_per_call"])
    return {
        "redis_us_per_op": round(min(per_op), 3),
        "redis_cpu_us_per_op": round(min(cpu_per_op), 3),
        "redis_usec_per_call": round(min(per_call), 1),
    }


def _main_thread_cpu(redis: Redis[bytes]) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000, help="ops per batch handed over")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    changes = planned(args.events)
    ops = key_ops(changes)
    batches = [ops[s : s + args.batch] for s in range(0, len(ops), args.batch)]
    source, sha = apply_script()
    with tempfile.TemporaryDirectory(prefix="apply-args-") as home:
        server = RedisServer(Path(home) / "redis", free_port())
        server.start()
        try:
            redis: Redis[bytes] = Redis(port=server.port)
            redis.execute_command("SCRIPT LOAD", source)
            packed = encode(batches, sha, redis)
            call_args = [c for b in batches for c in calls(b, range(len(b)))]
            result: dict[str, Any] = {
                "events": args.events,
                "ops": len(ops),
                "calls": len(packed),
                "args_per_op": round(sum(len(c.args) for c in call_args) / len(ops), 2),
                "bytes_per_op": round(sum(len(p) for c in packed for p in c) / len(ops), 1),
                "worker_us_per_op": round(worker_us_per_op(batches, sha, redis, args.rounds), 3),
                **redis_us_per_op(packed, len(ops), redis, args.rounds),
                "account_us_per_change": round(
                    account_us_per_change(changes, redis, args.rounds), 3
                ),
            }
            redis.close()
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
