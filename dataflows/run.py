"""How the flow runs: worker threads, the processes of a cluster, the recovery store.

Progress (each source partition's offset) is snapshotted every epoch into the recovery
store; a restarted process resumes from its last snapshot.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from cdc_cache.core.errors import ConfigError

log = logging.getLogger("cdc_cache.worker")


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
    cli_main(
        flow,
        workers_per_process=workers,
        process_id=process_id,
        addresses=addresses or None,
        epoch_interval=timedelta(milliseconds=epoch_interval_ms),
        recovery_config=RecoveryConfig(recovery) if recovery is not None else None,
    )
