"""Each worker thread's CPU while 1 and 2 worker processes drain the same events.

Why a second process on this machine gains little: loads N events once
(``bench/workload.py``), then has 1 process and a 2-process Bytewax cluster drain them,
alternating ``--rounds`` times, and reads every thread's CPU from ``/proc`` before and
after each drain and over ``--idle`` seconds once it is done. Threads are grouped by
name: in one process the dataflow runs on the main thread (``python``); in a cluster on a
``timely`` thread; librdkafka's threads are ``rdk:*``.

    .venv/bin/python bench/threads.py [--events 100000] [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import Bench, load, load_conditions
from bench.workload import Generator

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each live thread of ``pid``, by ``name:tid``."""
    found: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2 :].split()
        found[f"{name}:{tid}"] = (int(fields[11]) + int(fields[12])) / TICKS
    return found


def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds used between two readings, summed by thread name (``rdk:*`` as one)."""
    groups: defaultdict[str, float] = defaultdict(float)
    for thread, seconds in after.items():
        name = thread.split(":")[0]
        groups["rdk" if name.startswith("rdk") else name] += seconds - before.get(thread, 0.0)
    ranked = sorted(groups.items(), key=lambda group: group[1], reverse=True)
    return {name: round(seconds, 2) for name, seconds in ranked if seconds > 0.01}


def drain(
    bench: Bench, generator: Generator, loaded: dict[str, Any], processes: int, idle_s: float
) -> dict[str, Any]:
    """One drain by ``processes`` processes: rate, each process's threads, then idle use."""
    bench.reset_redis()
    ports = bench.start_workers(generator.prefix, processes)
    pids = [proc.pid for proc in bench.procs]
    before = {pid: thread_cpu(pid) for pid in pids}
    first, done = bench.wait_consumed(ports, loaded["records"], timeout=900)
    after = {pid: thread_cpu(pid) for pid in pids}
    time.sleep(idle_s)
    rested = {pid: thread_cpu(pid) for pid in pids}
    bench.stop_workers()
    threads = [used(before[pid], after[pid]) for pid in pids]
    total = sum(sum(groups.values()) for groups in threads)
    return {
        "processes": processes,
        "events_per_s": round(loaded["events"] / (done - first)),
        "worker_cpu_us_per_event": round(total / loaded["events"] * 1e6, 1),
        "threads_cpu_s": threads,
        "idle_cores": [
            round(sum(used(after[pid], rested[pid]).values()) / idle_s, 3) for pid in pids
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle after a drain")
    parser.add_argument("--out", type=Path, default=Path("bench/results/threads-2proc.json"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cdc-threads-"))
    bench = Bench(home)
    result: dict[str, Any] = {"conditions_start": load_conditions(), "runs": []}
    try:
        bench.start()
        generator = Generator(prefix="bench", seed=1)
        loaded = load(bench, generator, args.events)
        for round_ in range(args.rounds):
            for processes in (1, 2):
                run = drain(bench, generator, loaded, processes, args.idle)
                result["runs"].append(run)
                print(f"round {round_ + 1}/{args.rounds}: {json.dumps(run)}", flush=True)
    finally:
        bench.stop()
        shutil.rmtree(home, ignore_errors=True)
    result["conditions_end"] = load_conditions()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
