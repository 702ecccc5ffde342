"""Test servers' ports: below the ephemeral range, and never shared by two test processes."""

from __future__ import annotations

import socket

import pytest

from cdc_cache.tools.devstack import process
from cdc_cache.tools.devstack.process import StackError, _port_slice, free_port


def first_ephemeral() -> int:
    return int(process._EPHEMERAL_RANGE.read_text().split()[0])


def test_ports_are_below_the_ephemeral_range_so_no_outgoing_connection_takes_one() -> None:
    ports = [free_port() for _ in range(200)]
    assert max(ports) < first_ephemeral()
    assert len(set(ports)) == len(ports)  # never handed out twice


def test_each_xdist_process_picks_from_a_slice_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for worker in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        slices.append(set(_port_slice()))
    assert all(len(s) > 3_000 for s in slices)
    assert not (slices[0] & slices[1] or slices[1] & slices[2] or slices[0] & slices[2])
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert free_port() in slices[1]


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setattr(process, "_port_slice", lambda: range(port, port + 1))
    monkeypatch.setattr(process, "_handed_out", set())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        with pytest.raises(StackError, match="no free loopback port"):
            free_port()
    assert free_port() == port  # free again once nothing holds it
