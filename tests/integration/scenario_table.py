"""The fault-injection scenarios' table: one row per scenario, printed after the session.

Under pytest-xdist every worker runs some scenarios: each hands its rows to the
controller when it finishes, and the controller prints one table of them all. The table
is a plugin registered by ``tests/conftest.py``, so the controller (which runs no test)
has it too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pytest

NAME = "fault-scenario-table"
_WORKER_ROWS = "fault_scenario_rows"


@dataclass(frozen=True)
class Row:
    scenario: str
    changes: int
    faults: str
    stale: int
    lost: int
    missing: int
    resurrected: int
    dlq: int  # distinct ids
    dlq_messages: int  # a failure re-delivered after a crash is filed again, same id
    injected: int
    seconds: float
    inspected: dict[str, Any] | None = None  # the inspector's report, when one ran

    def cells(self) -> tuple[str, ...]:
        return (
            self.scenario,
            str(self.changes),
            self.faults,
            str(self.stale),
            str(self.lost),
            str(self.missing),
            str(self.resurrected),
            f"{self.dlq} ({self.dlq_messages}) / {self.injected}",
            *self._inspected(),
            f"{self.seconds:.0f}",
        )

    def _inspected(self) -> tuple[str, str, str]:
        if self.inspected is None:
            return "-", "-", "-"
        window = self.inspected["windows"]["1h"]
        ttc = self.inspected["time_to_consistency_s"]
        return (
            f"{window['consistency']} of {window['checks']}",
            f"{ttc['p99']} / {ttc['max']}",
            str(self.inspected["unresolved"]),
        )


HEADER = (
    "scenario", "changes", "faults injected", "stale", "lost", "missing", "resurrected",
    "DLQ ids (messages) / poison injected", "inspector: consistent at 1 s (checks)",
    "time to consistency p99 / max s", "unresolved", "wall s",
)  # fmt: skip


class ScenarioTable:
    """Collects one row per scenario and prints the table after the test session."""

    def __init__(self, config: pytest.Config) -> None:
        self.rows: list[Row] = []
        self._config = config

    def pytest_sessionfinish(self) -> None:
        output = getattr(self._config, "workeroutput", None)
        if output is not None:  # an xdist worker: the controller prints
            output[_WORKER_ROWS] = [asdict(row) for row in self.rows]

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """An xdist worker finished: keep the rows it ran."""
        rows = getattr(node, "workeroutput", {}).get(_WORKER_ROWS, [])
        self.rows += [Row(**row) for row in rows]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows or hasattr(self._config, "workerinput"):
            return
        lines = [HEADER, *(r.cells() for r in self.rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
        terminalreporter.section("fault-injection scenarios")
        for line in lines:
            cells = (c.ljust(w) for c, w in zip(line, widths, strict=True))
            terminalreporter.write_line(" | ".join(cells))
        terminalreporter.write_line(
            "lost = invalidated keys still holding a value; missing = rows' keys without their "
            "value (a lost write, except where eviction or memory may take values); "
            "inspector columns: cdc-cache inspect beside the worker, every change sampled"
        )
