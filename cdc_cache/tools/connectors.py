"""Apply the connector files to Kafka Connect and report whether they run.

The worker relies on settings in ``connectors/*.json`` (tombstones, TRUNCATE, heartbeats,
decimals as strings), so deploying exactly those files is part of running cdc-cache.
``apply`` makes Kafka Connect's configuration equal to the files: it compares first and
PUTs only what differs, because every PUT restarts the connector's tasks. ``status`` reads
each connector's state and its tasks', with the trace of whatever FAILED.

HTTP stays in ``connect_client``, reading the files in ``connector_files``; everything that
turns files and responses into a report is a pure function, tested without a server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from cdc_cache.tools.connect_client import (
    ConnectClient,
    ConnectRestError,
    UrllibTransport,
)
from cdc_cache.tools.connector_files import (
    ConnectorFile,
    changed_keys,
    load_connectors,
    resolve_env,
)

FAILED_SETTLE_S = 5.0
"""How long a FAILED state must persist before ``--wait`` gives up on it: right after an
update, the status of the tasks that ran before the restart can still read FAILED."""


# --- apply ---------------------------------------------------------------------------------

Action = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``apply`` did to one connector, and which keys it changed."""

    name: str
    action: Action
    changed: tuple[str, ...] = ()
    unresolved_env: tuple[str, ...] = ()

    def format(self) -> str:
        """One report line; changed keys are named, their values (secrets) are not."""
        line = f"  {self.name:<24} {self.action}"
        if self.changed and self.action == "updated":
            line += f": {', '.join(self.changed)}"
        for variable in self.unresolved_env:
            line += (
                f"\n  {'':<24} ${{env:{variable}}} is not set here, so Kafka Connect must resolve "
                "it: set it here, or give Connect's workers an EnvVarConfigProvider "
                "(config.providers=env)"
            )
        return line


def apply_connectors(
    client: ConnectClient, connectors: Sequence[ConnectorFile], environ: Mapping[str, str]
) -> list[ApplyResult]:
    """Make Connect's config equal to each file; PUT only where it differs."""
    results: list[ApplyResult] = []
    for connector in connectors:
        desired, unresolved = resolve_env(connector.config, environ)
        current = client.config(connector.name)
        changed = () if current is None else changed_keys(current, desired)
        if current is not None and not changed:
            results.append(ApplyResult(connector.name, "unchanged", (), unresolved))
            continue
        try:
            status = client.put_config(connector.name, desired)
        except ConnectRestError as exc:
            msg = f"{connector.path}: {exc}"
            raise ConnectRestError(msg) from exc
        action: Action = "created" if status == 201 else "updated"
        results.append(ApplyResult(connector.name, action, changed, unresolved))
    return results


# --- status --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """One task's state as Connect reports it; ``trace`` is set when it FAILED."""

    id: int
    state: str
    worker_id: str
    trace: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    """A connector's state and its tasks'.

    Besides Connect's states: ``MISSING`` when Connect does not know the connector,
    ``PENDING`` when apply has just created it and no worker has reported on it yet.
    """

    name: str
    state: str
    worker_id: str = ""
    trace: str | None = None
    tasks: tuple[TaskStatus, ...] = ()

    @property
    def failed(self) -> bool:
        """FAILED or missing: nothing will change that without an operator."""
        return self.state in ("FAILED", "MISSING") or any(t.state == "FAILED" for t in self.tasks)

    @property
    def running(self) -> bool:
        """The connector and at least one task run, and no task is in another state."""
        return (
            self.state == "RUNNING"
            and bool(self.tasks)
            and all(t.state == "RUNNING" for t in self.tasks)
        )

    def format(self) -> str:
        """Report lines: the connector's state, then each task's, with traces indented."""
        if self.state == "MISSING":
            return (
                f"  {self.name:<24} MISSING    Kafka Connect has no such connector; "
                "create it with `cdc-cache connectors apply`"
            )
        tasks = ", ".join(f"task {t.id} {t.state} on {t.worker_id}" for t in self.tasks)
        lines = [f"  {self.name:<24} {self.state:<10} {tasks or 'no tasks yet'}"]
        if self.trace:
            lines.append(_indent(f"connector trace:\n{self.trace}"))
        lines.extend(_indent(f"task {t.id} trace:\n{t.trace}") for t in self.tasks if t.trace)
        return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.rstrip().splitlines())


def parse_status(
    name: str, body: Mapping[str, Any] | None, *, exists: bool = False
) -> ConnectorStatus:
    """Turn ``GET /connectors/<name>/status`` (None: 404) into a :class:`ConnectorStatus`.

    With ``exists`` (apply has just put its config) a 404 is ``PENDING``: Connect writes
    a new connector's first status only once a worker has started it.
    """
    if body is None:
        return ConnectorStatus(name, "PENDING" if exists else "MISSING")
    try:
        connector = body["connector"]
        tasks = tuple(
            TaskStatus(int(t["id"]), str(t["state"]), str(t.get("worker_id", "")), t.get("trace"))
            for t in body.get("tasks", [])
        )
        return ConnectorStatus(
            name,
            str(connector["state"]),
            str(connector.get("worker_id", "")),
            connector.get("trace"),
            tuple(sorted(tasks, key=lambda t: t.id)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = (
            f"unexpected status document for {name} ({exc!r}): {body!r:.300}; "
            "check that --url points at Kafka Connect's REST API"
        )
        raise ConnectRestError(msg) from exc


def read_status(
    fetch: Callable[[str], Mapping[str, Any] | None],
    names: Sequence[str],
    wait_s: float = 0.0,
    *,
    exists: bool = False,
    poll_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_poll: Callable[[list[ConnectorStatus]], None] | None = None,
) -> list[ConnectorStatus]:
    """Read every connector's status; with ``wait_s``, poll until all run or time is up.

    ``fetch`` is :meth:`ConnectClient.status` (a status document, None for a 404);
    ``on_poll`` hears every poll's statuses while it waits.

    A FAILED or missing connector ends the wait early once that has held for
    :data:`FAILED_SETTLE_S`. ``exists`` is passed on to :func:`parse_status`.
    """
    deadline = clock() + wait_s
    failing_since: float | None = None
    while True:
        statuses = [parse_status(name, fetch(name), exists=exists) for name in names]
        now = clock()
        if any(s.failed for s in statuses):
            failing_since = now if failing_since is None else failing_since
        else:
            failing_since = None
        if (
            all(s.running for s in statuses)
            or now >= deadline
            or (failing_since is not None and now - failing_since >= FAILED_SETTLE_S)
        ):
            return statuses
        if on_poll is not None:
            on_poll(statuses)
        sleep(min(poll_s, max(deadline - now, 0.0)))


def status_exit_code(statuses: Sequence[ConnectorStatus], waited: bool) -> int:
    """1 if anything FAILED or is missing, or (after a wait) is not yet running; else 0."""
    if any(s.failed for s in statuses):
        return 1
    if waited and not all(s.running for s in statuses):
        return 1
    return 0


def format_status(statuses: Sequence[ConnectorStatus], url: str, wait_s: float) -> str:
    """The status section of the report, ending with a one-line verdict."""
    lines = [f"status at {url}:", *(s.format() for s in statuses)]
    failed = [s.name for s in statuses if s.failed]
    waiting = [s.name for s in statuses if not s.failed and not s.running]
    if failed:
        lines.append(f"FAILED or missing: {', '.join(failed)}")
    elif waiting and wait_s > 0:
        lines.append(f"not RUNNING after {wait_s:g} s: {', '.join(waiting)}")
    elif waiting:
        lines.append(f"not RUNNING yet: {', '.join(waiting)} (add --wait SECONDS to wait)")
    else:
        lines.append("all connectors and tasks RUNNING")
    return "\n".join(lines)


# --- the two commands ------------------------------------------------------------------------


def run(
    command: Literal["apply", "status"],
    url: str,
    directory: Path,
    only: Sequence[str] = (),
    wait_s: float = 0.0,
    *,
    out: Callable[[str], None],
    err: Callable[[str], None],
    environ: Mapping[str, str] | None = None,
    as_json: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> int:
    """``cdc-cache connectors apply|status``: report to ``out``, return the exit code.

    ``err`` hears 409 retries; ``environ`` (default: os.environ) fills ``${env:VAR}``;
    ``as_json``: one JSON document; ``progress(running, total, note)`` hears each poll.
    """
    connectors = load_connectors(directory, only)
    client = ConnectClient(UrllibTransport(url), on_conflict=err)
    results: list[ApplyResult] = []
    if command == "apply":
        results = apply_connectors(client, connectors, os.environ if environ is None else environ)
        if not as_json:
            out("\n".join([f"applied to {client.url}:", *(r.format() for r in results)]))
    names = [c.name for c in connectors]

    def polled(statuses: list[ConnectorStatus]) -> None:
        waiting = ", ".join(s.name for s in statuses if not s.running)
        if progress is not None:
            progress(sum(s.running for s in statuses), len(statuses), f"waiting for {waiting}")

    statuses = read_status(client.status, names, wait_s, exists=command == "apply", on_poll=polled)
    code = status_exit_code(statuses, waited=wait_s > 0)
    if as_json:
        report = report_json(client.url, results, statuses, code)
        out(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        out(format_status(statuses, client.url, wait_s))
    return code


def report_json(
    url: str, results: Sequence[ApplyResult], statuses: Sequence[ConnectorStatus], code: int
) -> dict[str, Any]:
    """The report as plain JSON data (``--json``)."""
    return {
        "url": url,
        "applied": [asdict(r) for r in results],
        "connectors": [{**asdict(s), "running": s.running, "failed": s.failed} for s in statuses],
        "exit_code": code,
    }
