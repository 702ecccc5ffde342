"""A partial benchmark run never replaces the committed results of the whole run."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.throughput import ROOT, results_path

WHOLE = {"profile": None, "lineage_ab": 0, "code_ab": None, "latency_only": 0, "out": None}


def test_the_whole_run_writes_the_committed_results_by_default() -> None:
    assert results_path(argparse.Namespace(**WHOLE)) == ROOT / "bench/results/throughput.json"


@pytest.mark.parametrize(
    "partial",
    [
        {"profile": Path("/tmp/p.txt")},
        {"lineage_ab": 3},
        {"code_ab": Path("/tmp/base")},
        {"latency_only": 8000.0},
    ],
)
def test_a_partial_run_writes_only_where_it_is_told(partial: dict[str, object]) -> None:
    assert results_path(argparse.Namespace(**(WHOLE | partial))) is None
    told = Path("/tmp/elsewhere.json")
    assert results_path(argparse.Namespace(**(WHOLE | partial | {"out": told}))) == told
