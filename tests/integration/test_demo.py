"""``cdc-cache demo`` runs the whole path, keeps the cache consistent and leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_cache.devstack.process import ManagedProcess, free_port, port_open
from cdc_cache.devstack.stack import DEFAULT_PORTS, Stack, StackConfig, port_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_env() -> Iterator[dict[str, str]]:
    """A short private home (MariaDB's socket path is limited) and free ports."""
    home = Path(tempfile.mkdtemp(prefix="cdc-demo-"))
    env = {**os.environ, "CDC_CACHE_HOME": str(home)}
    env |= {port_env(s): str(free_port()) for s in DEFAULT_PORTS}
    yield env
    ManagedProcess("worker", (), home / "demo").stop()
    Stack(StackConfig.from_env(env)).down(progress=lambda _: None)
    shutil.rmtree(home, ignore_errors=True)


def _processes_under(home: Path) -> list[str]:
    """Command lines of live processes that mention ``home`` or run inside it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(home) in cmdline or cwd.startswith(str(home))):
            found.append(f"{proc.name}: {cmdline}")
    return found


def _count(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return int(match.group(1))


def test_demo_runs_checks_consistency_and_stops_everything(demo_env: dict[str, str]) -> None:
    home = Path(demo_env["CDC_CACHE_HOME"])
    result = subprocess.run(
        [sys.executable, "-m", "cdc_cache", "demo", "--duration", "20", "--rate", "20"],
        env=demo_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    assert _count(r"transactions\s+(\d+) committed", output) > 0
    assert _count(r"events\s+(\d+) applied", output) > 0
    assert _count(r"(\d+) rejected", output) == 0
    assert _count(r"consistency\s+(\d+) ok", output) > 0
    assert _count(r"(\d+) stale, \d+ unexpected", output) == 0
    assert _count(r"(\d+) unexpected", output) == 0

    metrics_port = _count(r"metrics http://127\.0\.0\.1:(\d+)/metrics", output)
    ports = [int(demo_env[port_env(s)]) for s in DEFAULT_PORTS if s != "postgres"]
    assert not [p for p in [*ports, metrics_port] if port_open(p)]
    assert _processes_under(home) == []
    assert not any(row.up for row in Stack(StackConfig.from_env(demo_env)).status())
