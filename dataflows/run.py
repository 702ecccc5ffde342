"""How the flow runs: worker threads, the processes of a cluster, the recovery store.

Progress (each source partition's offset) is snapshotted every epoch into the recovery
store; a restarted process resumes from its last snapshot. While the flow runs, Python's
cyclic garbage collector is tuned for it (:func:`collector_tuned`), and the sink's writer
thread gets the interpreter back sooner after each Redis reply (:func:`handover_shortened`).
"""

from __future__ import annotations

import gc
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from cdc_cache.core.errors import ConfigError

log = logging.getLogger("cdc_cache.worker")

YOUNG_COLLECTION_EVERY: int = 50_000
"""Allocations between collections of the youngest generation while the flow runs (Python:
700), and 20 young (older) collections per next one (Python: 10)."""

SWITCH_INTERVAL_S: float = 0.001
"""How long a thread waiting for the interpreter waits before the running one must hand it
over, while the flow runs (Python: 5 ms)."""


def recovery_share(partitions: int, processes: int, process_id: int) -> list[int]:
    """The recovery partitions process ``process_id`` of ``processes`` creates: i mod processes.

    Bytewax needs the cluster as a whole to hold every partition: with a copy of each in
    every process, all but one copy stay empty, and once the cluster is rescaled Bytewax
    may pick an empty one and refuse to resume (InconsistentPartitionsError). Every
    process gets at least one partition.
    """
    if partitions < processes:
        msg = (
            f"recovery_partitions is {partitions} for a cluster of {processes} processes "
            f"(addresses): set recovery_partitions to at least {processes}"
        )
        raise ConfigError(msg)
    return list(range(process_id, partitions, processes))


def prepare_recovery(
    directory: Path | None, partitions: int, processes: int, process_id: int
) -> Path | None:
    """Create this process's share of the recovery partitions in an empty ``directory``.

    A directory that holds partitions is reused as it is (restarts, rescaled clusters).
    None (no directory): the flow runs without recovery.
    """
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("part-*.sqlite3")):
        share = recovery_share(partitions, processes, process_id)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".init-") as staging:
            init_db_dir(Path(staging), partitions)
            for index in share:
                Path(staging, f"part-{index}.sqlite3").rename(directory / f"part-{index}.sqlite3")
        log.info(
            "initialised recovery store",
            extra={"dir": str(directory), "partitions": partitions, "held_here": share},
        )
    return directory


def run_flow(
    flow: Dataflow,
    *,
    workers: int,
    process_id: int | None,
    addresses: list[str],
    epoch_interval_ms: int,
    recovery: Path | None,
) -> None:
    """Run ``flow`` until its sources end (a stop request), as one process of a cluster."""
    with collector_tuned(), handover_shortened():
        cli_main(
            flow,
            workers_per_process=workers,
            process_id=process_id,
            addresses=addresses or None,
            epoch_interval=timedelta(milliseconds=epoch_interval_ms),
            recovery_config=RecoveryConfig(recovery) if recovery is not None else None,
        )


@contextmanager
def collector_tuned() -> Iterator[None]:
    """Python's cyclic collector, tuned for a flow: fewer collections, less to scan.

    What exists at the start is frozen, and the young generation is collected every
    :data:`YOUNG_COLLECTION_EVERY` allocations. With Python's defaults the collector took
    2.1 s of a worker's 7.2 s of CPU draining 100,000 events (2,041 collections, 15 of
    them scanning the whole heap: modules, rules, settings). The per-change objects are
    freed by reference counting, not by the collector, so collecting less often costs at
    most the cyclic garbage of one interval. Frozen objects are never scanned, and never
    freed if they become cyclic garbage: they are unfrozen when the flow ends, so a flow
    rebuilt for new topics does not keep the old one.
    """
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


@contextmanager
def handover_shortened() -> Iterator[None]:
    """Threads hand the interpreter over every :data:`SWITCH_INTERVAL_S`, not every 5 ms.

    The sink's writer thread (``cdc_cache.sink.background``) releases the interpreter while
    it waits for Redis; when the reply comes, the dataflow thread is usually decoding the
    next batch and keeps the interpreter until the switch interval runs out. Each of a
    write's round trips then waits up to that interval for nothing: beside a busy dataflow
    thread a write of 250 changes took 14 ms (median) with 5 ms and 7-10 ms with 1 ms, where
    it takes 4-5 ms alone (docs/benchmarks.md). The two threads' work is the same either way.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
