"""Each process of a cluster creates only its share of a new recovery store."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import ConfigError
from dataflows.run import prepare_recovery, recovery_share


@st.composite
def clusters(draw: st.DrawFn) -> tuple[int, int]:
    processes = draw(st.integers(1, 16))
    return draw(st.integers(processes, 64)), processes


@given(clusters())
def test_shares_are_disjoint_complete_and_none_empty(cluster: tuple[int, int]) -> None:
    partitions, processes = cluster
    shares = [recovery_share(partitions, processes, pid) for pid in range(processes)]
    held = [index for share in shares for index in share]
    assert sorted(held) == list(range(partitions))  # each exactly once
    assert all(shares)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@given(st.integers(2, 16).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))))
def test_fewer_partitions_than_processes_is_refused(cluster: tuple[int, int]) -> None:
    partitions, processes = cluster
    with pytest.raises(ConfigError, match=f"recovery_partitions to at least {processes}"):
        recovery_share(partitions, processes, 0)


def prepare(directory: Path, process_id: int, processes: int, partitions: int) -> None:
    prepare_recovery(directory, partitions, processes, process_id)


def held(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_three_processes_on_empty_volumes_hold_each_partition_once(tmp_path: Path) -> None:
    volumes = [tmp_path / f"pod-{i}" / "recovery" for i in range(3)]
    for i, volume in enumerate(volumes):
        prepare(volume, i, 3, 7)
    assert [held(v) for v in volumes] == [
        ["part-0.sqlite3", "part-3.sqlite3", "part-6.sqlite3"],
        ["part-1.sqlite3", "part-4.sqlite3"],
        ["part-2.sqlite3", "part-5.sqlite3"],
    ]
    before = (volumes[0] / "part-0.sqlite3").stat().st_mtime_ns
    prepare(volumes[0], 0, 3, 7)  # a restart reuses what is there
    assert held(volumes[0]) == ["part-0.sqlite3", "part-3.sqlite3", "part-6.sqlite3"]
    assert (volumes[0] / "part-0.sqlite3").stat().st_mtime_ns == before


def test_a_single_process_holds_every_partition(tmp_path: Path) -> None:
    prepare(tmp_path, 0, 1, 3)
    assert held(tmp_path) == ["part-0.sqlite3", "part-1.sqlite3", "part-2.sqlite3"]


def test_too_few_partitions_for_the_cluster_stop_before_creating_any(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 3"):
        prepare(tmp_path / "recovery", 0, 3, 2)
    assert held(tmp_path / "recovery") == []
