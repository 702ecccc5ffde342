"""``--worker-cpu``: the harness and its servers leave the worker's CPU to the worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.throughput import Bench

CPUS = os.sched_getaffinity(0)


@pytest.fixture
def affinity_restored() -> Iterator[None]:
    yield
    os.sched_setaffinity(0, CPUS)


@pytest.mark.skipif(len(CPUS) < 2, reason="pinning needs two CPUs")
@pytest.mark.usefixtures("affinity_restored")
def test_the_harness_keeps_off_the_workers_cpu_and_says_which_is_which(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    worker = max(CPUS)
    assert bench.pin(worker) == {"worker": [worker], "others": sorted(CPUS - {worker})}
    assert os.sched_getaffinity(0) == CPUS - {worker}  # what the harness starts inherits it
    assert bench.worker_cpus == {worker}


@pytest.mark.usefixtures("affinity_restored")
def test_a_cpu_the_machine_does_not_offer_stops_with_what_it_has(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--worker-cpu 4096: needs it and another CPU"):
        Bench(tmp_path).pin(4096)
    assert os.sched_getaffinity(0) == CPUS
