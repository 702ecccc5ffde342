"""Supervise one local server process: start detached, wait until healthy, stop.

Each server gets a pid file and a log file under its home directory, so ``up`` is
idempotent and ``down`` works from another shell.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cdc_cache.core.errors import CdcCacheError


class StackError(CdcCacheError):
    """A local server is missing, failed to start, or did not become healthy."""


def require_binary(name: str, how_to_get: str) -> str:
    """Return the path of executable ``name`` or say how to install it."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found on PATH: {how_to_get}"
        raise StackError(msg)
    return path


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_BELOW_EPHEMERAL = 12_000  # ports taken below the kernel's ephemeral range
_handed_out: set[int] = set()


def _port_slice() -> range:
    """The ports this process picks from.

    Below the kernel's ephemeral range, so no outgoing connection takes one between the
    pick and the server's bind; under pytest-xdist a slice of its own per test process, so
    two never pick the same one.
    """
    try:
        first_ephemeral = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32_768  # Linux's default
    low = max(1_024, first_ephemeral - _BELOW_EPHEMERAL)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (first_ephemeral - low) // max(1, workers)
    return range(low + worker * size, low + (worker + 1) * size)


def free_port() -> int:
    """An unused loopback TCP port (for tests that must not collide with anything).

    Picked at random from :func:`_port_slice`, never twice until half the slice was handed
    out, and checked free by binding it.
    """
    ports = _port_slice()
    if len(_handed_out) > len(ports) // 2:
        _handed_out.clear()
    for _ in range(len(ports)):
        port = random.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    msg = f"no free loopback port in {ports.start}-{ports.stop - 1}: stop servers left running"
    raise StackError(msg)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    """Poll ``check`` until it is true; on timeout raise with the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        lines = log.read_text(errors="replace").splitlines()[-15:]
        tail = "\n  last log lines (" + str(log) + "):\n    " + "\n    ".join(lines)
    msg = f"{what} did not become ready within {timeout:.0f}s{tail}"
    raise StackError(msg)


def initialise_data_dir(
    what: str, argv: Sequence[str], staging: Path, target: Path, cwd: Path
) -> None:
    """Run a data-directory initialiser into ``staging``, then move it to ``target``.

    Only a completed run is moved into place, so a crash mid-way is redone from scratch
    rather than mistaken for a ready directory.
    """
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, cwd=cwd)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-15:]
        msg = f"{what} into {staging} failed:\n    " + "\n    ".join(output)
        raise StackError(msg)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


@dataclass
class ManagedProcess:
    """A detached server process tracked by ``<home>/<name>.pid`` and ``<name>.log``."""

    name: str
    argv: Sequence[str]
    home: Path
    env: Mapping[str, str] | None = None
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    def pid(self) -> int | None:
        """The live process id, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return None
        except PermissionError:
            return pid
        if _is_zombie(pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, ready: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Start unless already running, then wait for ``ready``; True if it was started."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self.running():
            wait_for(ready, timeout, self.name, self.log_file)
            return False
        env = dict(os.environ if self.env is None else self.env)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))

        def alive_and_ready() -> bool:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                lines = self.log_file.read_text(errors="replace").splitlines()[-15:]
                msg = (
                    f"{self.name} exited with code {proc.returncode} during startup; "
                    f"log {self.log_file}:\n    " + "\n    ".join(lines)
                )
                raise StackError(msg)
            return ready()

        wait_for(alive_and_ready, timeout, self.name, self.log_file)
        return True

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the process (signal, then SIGKILL after ``timeout``); True if it was running."""
        pid = self.pid()
        if pid is None:
            return False
        _signal_group(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.05)
        else:
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the process at once (crash tests)."""
        pid = self.pid()
        if pid is not None:
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.02)
            self.pid_file.unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


class ProcessService:
    """A server run by one ManagedProcess: the status and stop every such server shares.

    Subclasses set ``process`` and may raise ``stop_timeout`` for servers that flush
    state on shutdown.
    """

    process: ManagedProcess
    stop_timeout: float = 15.0

    def stop(self) -> None:
        """Stop gracefully (the process's stop signal), SIGKILL after ``stop_timeout``."""
        self.process.stop(timeout=self.stop_timeout)

    def running(self) -> bool:
        return self.process.running()

    def pid(self) -> int | None:
        return self.process.pid()
