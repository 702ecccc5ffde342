"""The processes integration tests start: the worker, the inspector, the Debezium runner.

Each runs in its own session with its output kept in a log, shown when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from cdc_cache.tools.devstack.process import free_port
from tests.workload import RULES_YAML

ROOT = Path(__file__).resolve().parents[2]
INSPECT_DB_QUERIES_PER_S = 400  # the database budget of the inspectors tests start


class Service:
    """A child process in its own session, its output kept in a log for failure messages."""

    def __init__(self, argv: list[str], log: Path, env: Mapping[str, str] | None = None):
        self.argv = argv
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
            )

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: int, timeout: float = 30) -> int:
        """Signal the whole process group and return the exit status."""
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def terminate(self, timeout: float = 20) -> int:
        return self.signal(signal.SIGTERM, timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"{self.argv[2]} exited {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        """Kill what is still running (test teardown)."""
        if self.running():
            self.kill()


def worker(
    tmp_path: Path,
    brokers: str,
    redis_url: str,
    topics: Sequence[str],
    *,
    rules: str = RULES_YAML,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
) -> Service:
    """``cdc-cache run`` reading ``topics``, snapshotting progress every 500 ms; ``env``
    adds settings (``CDC_CACHE_*``)."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    argv = [
        sys.executable, "-m", "cdc_cache", "run",
        "--rules", str(rules_file),
        "--brokers", brokers,
        *(arg for topic in topics for arg in ("--topic", topic)),
        "--redis-url", redis_url,
        "--recovery-dir", str(tmp_path / "recovery"),
        "--workers", str(workers),
    ]  # fmt: skip
    return Service(
        argv, tmp_path / "worker.log", {"CDC_CACHE_EPOCH_INTERVAL_MS": "500", **(env or {})}
    )


class Cluster:
    """Two ``cdc-cache run`` processes as one Bytewax cluster, each with its own recovery
    directory and admin port."""

    def __init__(
        self,
        tmp_path: Path,
        bootstrap: str,
        redis_url: str,
        topics: Sequence[str],
        env: Mapping[str, str],
        rules: str = RULES_YAML,
    ) -> None:
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        self.ports = [free_port() for _ in range(2)]
        self.services: list[Service] = []
        for process_id in range(2):
            home = tmp_path / f"process-{process_id}"
            home.mkdir(exist_ok=True)
            service = worker(home, bootstrap, redis_url, topics, rules=rules, env=env)
            service.argv += ["--process-id", str(process_id)]
            service.argv += ["--metrics-port", str(self.ports[process_id])]
            service.argv += [arg for address in addresses for arg in ("--address", address)]
            self.services.append(service)

    def start(self) -> None:
        for service in self.services:
            service.start()

    def stop(self) -> None:
        for service in self.services:
            service.stop()

    def partitions_of(self, process: int, topic: str) -> list[int]:
        """The partitions of ``topic`` the process reads (from its lag metrics)."""
        url = f"http://127.0.0.1:{self.ports[process]}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return []
        label = f'topic="{topic}"'
        return sorted(
            int(line.split('partition="')[1].split('"')[0])
            for line in text.splitlines()
            if line.startswith("cdc_cache_connector_lag_seconds{") and label in line
        )


def inspector(
    tmp_path: Path,
    brokers: str,
    redis_url: str,
    topics: Sequence[str],
    dsn: str,
    port: int,
    *,
    rules: str = RULES_YAML,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
) -> Service:
    """``cdc-cache inspect`` beside a worker: every change sampled (up to 200 a second),
    checked once it settled for 1 s, a wrong key re-checked for up to 30 s; ``options``
    (flag: value) change that."""
    rules_file = tmp_path / "inspect-rules.yaml"
    rules_file.write_text(rules)
    flags = {
        "--sample-every": "1",
        "--max-samples-per-s": "200",
        "--max-db-queries-per-s": str(INSPECT_DB_QUERIES_PER_S),
        "--settle-s": "1",
        "--recheck-limit-s": "30",
        "--min-checks": "20",
        **(options or {}),
    }
    argv = [
        sys.executable, "-m", "cdc_cache", "inspect",
        "--rules", str(rules_file),
        "--brokers", brokers,
        *(arg for topic in topics for arg in ("--topic", topic)),
        "--redis-url", redis_url,
        "--db", dsn,
        "--port", str(port),
        *(part for flag in flags.items() for part in flag),
    ]  # fmt: skip
    return Service(argv, tmp_path / "inspect.log", env)


def debezium(
    tmp_path: Path,
    *,
    source: str,
    db_port: int,
    brokers: str,
    prefix: str,
    databases: str,
    options: Sequence[str] = (),
) -> Service:
    """The embedded-engine runner (``cdc_cache.tools.devstack.debezium``) as the cdc user."""
    argv = [
        sys.executable, "-m", "cdc_cache.tools.devstack.debezium",
        f"--source={source}",
        f"--db-port={db_port}",
        "--db-user=cdc",
        "--db-password=cdc",
        f"--databases={databases}",
        f"--brokers={brokers}",
        f"--topic-prefix={prefix}",
        f"--state-dir={tmp_path / 'debezium'}",
        "--log-level=WARN",
        *options,
    ]  # fmt: skip
    return Service(argv, tmp_path / "debezium.log")
