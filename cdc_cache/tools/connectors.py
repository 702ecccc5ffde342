"""Apply the connector files to Kafka Connect and report whether they run.

The worker relies on settings in ``connectors/*.json`` (tombstones, TRUNCATE, heartbeats,
decimals as strings), so deploying exactly those files is part of running cdc-cache.
``apply`` makes Kafka Connect's configuration equal to the files: it compares first and
PUTs only what differs, because every PUT restarts the connector's tasks. ``status`` reads
each connector's state and its tasks', with the trace of whatever FAILED.

HTTP stays in :class:`UrllibTransport`; :class:`ConnectClient` adds Kafka Connect's error
conventions (409 while the group rebalances: retry); everything that turns files and
responses into a report is a pure function, tested without a server.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cdc_cache.core.errors import CdcCacheError, ConfigError
from cdc_cache.core.retry import Backoff

_ENV_PLACEHOLDER = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
FAILED_SETTLE_S = 5.0
"""How long a FAILED state must persist before ``--wait`` gives up on it: right after an
update, the status of the tasks that ran before the restart can still read FAILED."""


class ConnectRestError(CdcCacheError):
    """Kafka Connect could not be reached, refused a request, or answered unexpectedly."""


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer: the status code and the JSON body (text if it was not JSON)."""

    status: int
    body: Any


class Transport(Protocol):
    """Sends one request to Kafka Connect's REST API; ``url`` names it in messages."""

    url: str

    def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send ``body`` as JSON; return any HTTP answer, raise only if none came."""


class UrllibTransport:
    """The standard library's HTTP client: no dependency for a handful of requests."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send ``body`` as JSON; HTTP errors are answers too, only a dead socket raises."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Accept": "application/json", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as answer:
                return Response(answer.status, _parse_body(answer.read()))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, _parse_body(exc.read()))
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            msg = (
                f"cannot reach {self.url} ({reason}): is Kafka Connect running at {self.url}? "
                "Check --url (or CDC_CACHE_CONNECT_URL)"
            )
            raise ConnectRestError(msg) from exc


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def connect_message(response: Response) -> str:
    """Kafka Connect's own explanation (its error body's ``message``), else the raw body."""
    body = response.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(body)[:500] if body is not None else "(empty body)"


def _is_connect_error_body(response: Response) -> bool:
    """Connect's errors carry ``error_code``; a 404 without it is not from Connect."""
    return isinstance(response.body, dict) and "error_code" in response.body


def _fix_for(status: int) -> str:
    if status == 400:
        return "fix the connector file"
    if status == 409:
        return "a rebalance or another config change is still under way; retry later"
    if status >= 500:
        return "see the Kafka Connect worker's log"
    return "check that --url points at Kafka Connect's REST API"


class ConnectClient:
    """The three calls cdc-cache needs, with Kafka Connect's 409 retried with backoff.

    Connect answers 409 while its worker group rebalances or another config change is in
    flight; both clear by themselves, so the request is repeated until
    ``conflict_timeout_s`` has passed. ``on_conflict`` hears about each retry.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        backoff: Backoff | None = None,
        conflict_timeout_s: float = 60.0,
        on_conflict: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = transport.url
        self._transport = transport
        self._backoff = backoff or Backoff(initial=0.5, maximum=5.0)
        self._conflict_timeout_s = conflict_timeout_s
        self._on_conflict = on_conflict
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random()

    def config(self, name: str) -> dict[str, str] | None:
        """The connector's stored config, or None if Connect has no such connector."""
        config = self._get_or_none(f"/connectors/{_quote(name)}/config")
        return None if config is None else {str(k): str(v) for k, v in config.items()}

    def status(self, name: str) -> dict[str, Any] | None:
        """The connector's status document, or None if Connect has no such connector."""
        return self._get_or_none(f"/connectors/{_quote(name)}/status")

    def put_config(self, name: str, config: Mapping[str, str]) -> int:
        """Create (201) or update (200) the connector; any other answer raises."""
        method, path = "PUT", f"/connectors/{_quote(name)}/config"
        response = self._request(method, path, dict(config))
        if response.status not in (200, 201):
            raise self._refused(method, path, response)
        return response.status

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        method = "GET"
        response = self._request(method, path)
        if response.status == 404 and _is_connect_error_body(response):
            return None
        body = response.body
        if response.status != 200 or not isinstance(body, dict):
            raise self._refused(method, path, response)
        return body

    def _request(self, method: str, path: str, body: Any = None) -> Response:
        deadline = self._clock() + self._conflict_timeout_s
        attempt = 0
        while True:
            response = self._transport.request(method, path, body)
            if response.status != 409:
                return response
            attempt += 1
            delay = self._backoff.delay(attempt, self._rng)
            if self._clock() + delay > deadline:
                raise self._refused(method, path, response)
            if self._on_conflict is not None:
                self._on_conflict(
                    f"{method} {self.url}{path}: 409 {connect_message(response)}; "
                    f"retrying in {delay:.1f} s"
                )
            self._sleep(delay)

    def _refused(self, method: str, path: str, response: Response) -> ConnectRestError:
        return ConnectRestError(
            f"{method} {self.url}{path} answered {response.status}: "
            f"{connect_message(response)}; {_fix_for(response.status)}"
        )


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# --- connector files ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectorFile:
    """One ``<name>.json``: the connector's name and its ``config`` map as written."""

    name: str
    path: Path
    config: Mapping[str, str]


def load_connectors(directory: Path, only: Sequence[str] = ()) -> list[ConnectorFile]:
    """Read every ``*.json`` in ``directory`` (or the ``only`` ones), checked up front.

    Values must be strings, as Connect stores them, or an unchanged file would always
    look changed; a ``name`` key must agree with the file name, as Connect requires.
    """
    paths = sorted(directory.glob("*.json"))
    if not paths:
        msg = f"no connector files (*.json) in {directory}; pass --dir"
        raise ConfigError(msg)
    by_name = {path.stem: path for path in paths}
    unknown = sorted(set(only) - by_name.keys())
    if unknown:
        msg = (
            f"--only {', '.join(unknown)}: no such file in {directory} "
            f"(connectors there: {', '.join(by_name)})"
        )
        raise ConfigError(msg)
    return [_load_one(by_name[name]) for name in (only or by_name)]


def _load_one(path: Path) -> ConnectorFile:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        msg = f"{path}:{exc.lineno}: not valid JSON: {exc.msg}"
        raise ConfigError(msg) from exc
    if not isinstance(config, dict):
        msg = f"{path}: expected a JSON object (the connector's config map)"
        raise ConfigError(msg)
    not_strings = sorted(key for key, value in config.items() if not isinstance(value, str))
    if not_strings:
        msg = f"{path}: write these values as JSON strings: {', '.join(not_strings)}"
        raise ConfigError(msg)
    name = path.stem
    if config.get("name", name) != name:
        msg = f"{path}: name {config['name']!r} differs from the file name; rename one"
        raise ConfigError(msg)
    return ConnectorFile(name, path, config)


def resolve_env(
    config: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Replace ``${env:VAR}`` with the variable's value where it is set here.

    Unset variables stay as written (Connect's own ``EnvVarConfigProvider`` may resolve
    them on the worker) and are returned so the caller can say so. Other providers'
    placeholders, such as ``${file:...}``, are Connect's to resolve and pass untouched.
    """
    unresolved: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        value = environ.get(match.group(1))
        if value is None:
            unresolved.add(match.group(1))
            return match.group(0)
        return value

    resolved = {key: _ENV_PLACEHOLDER.sub(substitute, value) for key, value in config.items()}
    return resolved, tuple(sorted(unresolved))


def changed_keys(current: Mapping[str, str], desired: Mapping[str, str]) -> tuple[str, ...]:
    """Keys added, removed or changed; ``name``, which Connect adds, does not count."""
    keys = (current.keys() | desired.keys()) - {"name"}
    return tuple(sorted(key for key in keys if current.get(key) != desired.get(key)))


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
) -> list[ConnectorStatus]:
    """Read every connector's status; with ``wait_s``, poll until all run or time is up.

    ``fetch`` is :meth:`ConnectClient.status` (a status document, None for a 404).

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
) -> int:
    """``cdc-cache connectors apply|status``: report to ``out``, return the exit code.

    ``err`` hears about 409 retries; ``environ`` (default: this process's environment)
    resolves ``${env:VAR}`` placeholders.
    """
    connectors = load_connectors(directory, only)
    client = ConnectClient(UrllibTransport(url), on_conflict=err)
    if command == "apply":
        results = apply_connectors(client, connectors, os.environ if environ is None else environ)
        out("\n".join([f"applied to {client.url}:", *(r.format() for r in results)]))
    names = [c.name for c in connectors]
    statuses = read_status(client.status, names, wait_s, exists=command == "apply")
    out(format_status(statuses, client.url, wait_s))
    return status_exit_code(statuses, waited=wait_s > 0)
