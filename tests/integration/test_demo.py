"""``cdc-cache demo`` runs the whole path, keeps the cache consistent and leaves nothing behind.

Its live page, opened in headless Chromium from the URL the demo prints, shows an UPDATE
committed in MariaDB (through Debezium, the worker, Redis and the gateway); the test
reports the commit → on-page latency.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import ManagedProcess, free_port, port_open
from cdc_cache.tools.devstack.stack import DEFAULT_PORTS, Stack, StackConfig, port_env

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
    ManagedProcess("gateway", (), home / "demo").stop()
    ManagedProcess("inspect", (), home / "demo").stop()
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


class DemoRun:
    """``cdc-cache demo`` as a child process, its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_cache", "demo", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match is not None:
                return match
            assert self.proc.poll() is None, f"demo exited early:\n{self.output}"
            time.sleep(0.2)
        pytest.fail(f"{pattern!r} did not appear:\n{self.output}")

    def finish(self, timeout: float = 240) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code


COLLECT_CHANGES = """
window.__seen = [];
document.addEventListener("stock-change", (e) => window.__seen.push(
  {qty: e.detail.message.data.values.qty, receivedMs: e.detail.receivedMs}));
"""


def _commit_to_page_latencies(browser: Any, mariadb: MariaDB, updates: int) -> list[float]:
    """Commit UPDATEs of rows the page shows and time each until the page shows its qty.

    The demo's own load keeps writing too: a row it deleted or moved meanwhile (the UPDATE
    matches nothing) is skipped, and each UPDATE sets a qty the load never writes.
    """
    browser.execute_script(COLLECT_CHANGES)
    latencies: list[float] = []
    with mariadb.connect("inventory") as conn, conn.cursor() as cur:
        for n in range(updates * 5):
            if len(latencies) == updates:
                break
            sku, warehouse = browser.execute_script(
                "const td = document.querySelector(\"td[data-qty]:not([data-qty=''])\");"
                "const th = td.closest('table').querySelectorAll('thead th');"
                "return [td.parentElement.dataset.sku, th[td.cellIndex].textContent];"
            )
            qty = 900_000 + n
            committed_ms = time.time() * 1000
            cur.execute(
                "UPDATE stock SET qty = %s WHERE sku_id = %s AND warehouse = %s",
                (qty, sku, warehouse),
            )
            if cur.rowcount != 1:
                continue
            seen = WebDriverWait(browser, 30, poll_frequency=0.01).until(
                lambda b, qty=qty: b.execute_script(
                    "return window.__seen.find(c => c.qty === arguments[0]) || null", qty
                )
            )
            latencies.append(seen["receivedMs"] - committed_ms)
    assert len(latencies) == updates
    return latencies


def test_demo_runs_checks_consistency_and_stops_everything(
    demo_env: dict[str, str], browser: Any
) -> None:
    home = Path(demo_env["CDC_CACHE_HOME"])
    # Stopped by SIGTERM (as by Ctrl-C) once everything it must show was shown; the duration
    # only bounds a run whose output never comes.
    demo = DemoRun(demo_env, "--duration", "180", "--rate", "20")
    url = demo.wait_for(r"live page (http://127\.0\.0\.1:\d+/\?token=\S+)").group(1)
    demo.wait_for(r"\d+s  txns \d+")  # Debezium streams and the load is on
    browser.get(url)
    WebDriverWait(browser, 60).until(
        lambda b: (
            b.find_element(By.ID, "status").text == "live"
            and b.find_elements(By.CSS_SELECTOR, "td[data-qty]:not([data-qty=''])")
        )
    )
    mariadb = Stack(StackConfig.from_env(demo_env)).service("mariadb")
    assert isinstance(mariadb, MariaDB)
    latencies = _commit_to_page_latencies(browser, mariadb, updates=5)
    print(
        f"\ncommit -> on-page latency over {len(latencies)} UPDATEs: "
        f"median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms"
    )
    assert max(latencies) < 10_000
    browser.get("about:blank")
    demo.wait_for(r"depends  page:sku:\S+ \(stock \+ warehouse cities\) deleted")
    demo.wait_for(r"inspect   consistent 5m \S+ %? ?of [1-9]")
    demo.proc.send_signal(signal.SIGTERM)

    assert demo.finish() == 0, demo.output
    output = demo.output
    assert _count(r"transactions\s+(\d+) committed", output) > 0
    assert _count(r"events\s+(\d+) applied", output) > 0
    assert _count(r"(\d+) rejected", output) == 0
    assert _count(r"consistency\s+(\d+) ok", output) > 0
    assert _count(r"(\d+) stale, \d+ unexpected", output) == 0
    assert _count(r"(\d+) unexpected", output) == 0
    # the inspector ran beside the worker, its nines in the live output and the summary
    assert re.search(r"inspect   consistent 5m \S+ %? ?of \d+", output), output
    assert _count(r"inspector .* of (\d+)  time to consistency", output) > 0
    assert _count(r"(\d+) unresolved", output) == 0
    # a page depending on another table's rows went when one of them changed
    assert re.search(r"depends  page:sku:\S+ \(stock \+ warehouse cities\) deleted", output)
    assert "STILL CACHED" not in output, output

    metrics_port = _count(r"metrics http://127\.0\.0\.1:(\d+)/metrics", output)
    gateway_port = _count(r"live page http://127\.0\.0\.1:(\d+)/", output)
    inspect_port = _count(r"report http://127\.0\.0\.1:(\d+)/", output)
    ports = [int(demo_env[port_env(s)]) for s in DEFAULT_PORTS if s != "postgres"]
    assert not [p for p in [*ports, metrics_port, gateway_port, inspect_port] if port_open(p)]
    assert _processes_under(home) == []
    assert not any(row.up for row in Stack(StackConfig.from_env(demo_env)).status())
