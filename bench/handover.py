"""How long a write waits for the interpreter beside a busy dataflow thread, by switch interval.

The worker decodes on its dataflow thread while the sink's writer thread waits for Redis
(``cdc_cache.sink.background``). When a reply comes, the writer needs the interpreter back
from the dataflow thread, which hands it over only once the switch interval
(``sys.setswitchinterval``) runs out. This measures a writer applying batches of planned
ops to a real Redis, paced as at a moderate rate, with and without a thread routing the
same records (decode and plan: the dataflow thread's work) beside it, under Python's 5 ms
interval and the flow's (``dataflows.run.SWITCH_INTERVAL_S``):

* ``write_p50_ms`` / ``write_p99_ms``: wall time of one write (``RedisApplier.apply``);
* ``routed_per_s``: records the busy thread routed per second meanwhile.

    .venv/bin/python bench/handover.py [--rounds 3] [--seconds 4] [--out FILE]

The variants run in alternating rounds, so a load that comes and goes on a shared machine
skews them alike; medians of the rounds are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.decode_plan import FIXTURES, STOCK, records
from cdc_cache.plan.cache_ops import KeyOp
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import connect
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisServer
from dataflows.run import SWITCH_INTERVAL_S

ROOT = Path(__file__).resolve().parents[1]
BATCH = 250  # the worker's default batch_size
PACE_S = 0.03  # between writes: about 8,000 changes/s when a write takes none


def workload() -> tuple[list[Any], list[KeyOp]]:
    """The recorded stock changes (routed by the busy thread) and their planned key ops."""
    rules = parse_rules(STOCK.format(version="version: 2"))
    batch = records(FIXTURES / "schemas.jsonl", ".stock")
    ops: list[KeyOp] = []
    for record in batch:
        planned = route(record, rules)
        assert isinstance(planned, Planned), record
        ops += [op for op in planned.ops if isinstance(op, KeyOp)]
    return [(record, rules) for record in batch], ops


def busy(work: list[Any], stop: threading.Event, routed: list[int]) -> None:
    """Route the records in a loop until ``stop``, as the dataflow thread decodes."""
    done = 0
    while not stop.is_set():
        for record, rules in work:
            route(record, rules)
        done += len(work)
    routed.append(done)


def one_round(
    applier: RedisApplier, ops: list[KeyOp], work: list[Any], interval: float, *, beside: bool,
    seconds: float,
) -> dict[str, float]:  # fmt: skip
    """Writes for ``seconds`` at ``interval``, with or without the busy thread."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    stop = threading.Event()
    routed: list[int] = []
    thread = threading.Thread(target=busy, args=(work, stop, routed))
    batch = (ops * (BATCH // len(ops) + 1))[:BATCH]
    times = []
    try:
        if beside:
            thread.start()
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            started = time.perf_counter()
            applier.apply(batch)  # the same positions again: duplicates, as much work
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(PACE_S)
    finally:
        stop.set()
        if beside:
            thread.join()
        sys.setswitchinterval(previous)
    times.sort()
    return {
        "writes": len(times),
        "write_p50_ms": times[len(times) // 2],
        "write_p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
        "routed_per_s": routed[0] / seconds if routed else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per round and variant")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/handover.json")
    args = parser.parse_args()
    work, ops = workload()
    variants = [
        (f"{interval * 1000:g} ms, {'beside' if beside else 'alone'}", interval, beside)
        for beside in (False, True)
        for interval in (0.005, SWITCH_INTERVAL_S)
    ]
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="cdc-bench-handover-") as home:
        server = RedisServer(Path(home), free_port())
        server.start()
        try:
            applier = RedisApplier(connect(server.address()))
            for number in range(args.rounds):
                for name, interval, beside in variants:
                    seen = one_round(
                        applier, ops, work, interval, beside=beside, seconds=args.seconds
                    )
                    rounds[name].append(seen)
                    print(f"round {number + 1}/{args.rounds}, {name}: {seen}", flush=True)
        finally:
            server.stop()
    medians = {
        name: {field: round(statistics.median(r[field] for r in seen), 2) for field in seen[0]}
        for name, seen in rounds.items()
    }
    print("\n| switch interval, busy thread | write p50 | write p99 | routed by the busy thread |")
    print("|---|---|---|---|")
    for name, m in medians.items():
        routed = f"{m['routed_per_s']:,.0f}/s" if m["routed_per_s"] else "-"
        print(f"| {name} | {m['write_p50_ms']} ms | {m['write_p99_ms']} ms | {routed} |")
    result = {
        "batch": BATCH,
        "pace_s": PACE_S,
        "medians": medians,
        "rounds": rounds,
        "machine": {
            "python": platform.python_version(),
            "nproc": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
