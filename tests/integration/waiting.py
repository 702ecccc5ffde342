"""One wait for every integration test: poll until a condition holds, or fail naming it.

Time bounds here tolerate a loaded machine: a test waits for what it needs, it never
sleeps a fixed time in the hope that it happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

import pytest


class Watched(Protocol):
    """A process a wait watches (see ``services.Service``)."""

    def check_alive(self) -> None: ...

    def tail(self, lines: int = 30) -> str: ...


def held_within(
    check: Callable[[], bool],
    timeout: float,
    *,
    alive: Iterable[Watched] = (),
    interval: float = 0.1,
) -> bool:
    """True once ``check()`` held, False when ``timeout`` ran out first.

    Fails the test at once when a process of ``alive`` exited meanwhile.
    """
    watched = list(alive)
    deadline = time.monotonic() + timeout
    while not check():
        for service in watched:
            service.check_alive()
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float = 60,
    *,
    alive: Iterable[Watched] = (),
    shown: Watched | None = None,
    interval: float = 0.1,
) -> float:
    """Seconds until ``check()`` held; fails the test naming ``what`` when it did not.

    Fails at once when a process of ``alive`` exited; the failure shows the end of the log
    of ``shown`` (by default the last of ``alive``).
    """
    watched = list(alive)
    shown = shown or (watched[-1] if watched else None)
    started = time.monotonic()
    if not held_within(check, timeout, alive=watched, interval=interval):
        pytest.fail(f"{what}: not within {timeout:g}s" + (f"\n{shown.tail()}" if shown else ""))
    return time.monotonic() - started
