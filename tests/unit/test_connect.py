"""`cdc-cache connectors apply|status` against a recorded Kafka Connect REST exchange.

Kafka Connect does not run here. The exchanges in tests/fixtures/connect/*.json follow
Kafka Connect's documented REST API (PUT /connectors/<name>/config answers 201 when it
creates and 200 when it updates, with the connector info; GET .../status gives the
connector's and each task's state, with a ``trace`` on FAILED; errors are
``{"error_code", "message"}``, 404 for an unknown connector, 409 while the worker group
rebalances). A local http.server replays them in order over real HTTP and records any
request that does not match the script, so the client under test is the real one.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.retry import Backoff
from cdc_cache.tools.connect_client import ConnectClient, ConnectRestError, UrllibTransport
from cdc_cache.tools.connector_files import changed_keys, load_connectors, resolve_env
from cdc_cache.tools.connectors import (
    ApplyResult,
    ConnectorStatus,
    TaskStatus,
    parse_status,
    read_status,
)

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "connect"
CONNECTORS = FIXTURES / "connectors"
ENV = {"CDC_CACHE_TEST_PG_HOST": "pg.internal"}


def exchange(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


class RecordedConnect(HTTPServer):
    """Answers each request with the next recorded exchange; a mismatch is noted, not served."""

    def __init__(self, script: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), _Replay)
        self.script = deque(exchange(name) for name in script)
        self.mismatches: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if not self.script:
            self.mismatches.append(f"unscripted {method} {path}")
            return 500, {"error_code": 500, "message": "no more recorded exchanges"}
        recorded = self.script.popleft()
        expected = recorded["request"]
        if (method, path, body) != (expected["method"], expected["path"], expected.get("body")):
            self.mismatches.append(f"{method} {path} {body!r} instead of {expected!r}")
        response = recorded["response"]
        return response["status"], response["body"]


class _Replay(BaseHTTPRequestHandler):
    server: RecordedConnect

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        status, payload = self.server.answer(self.command, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_PUT = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def connect() -> Iterator[Any]:
    servers: list[RecordedConnect] = []

    def start(*script: str) -> RecordedConnect:
        server = RecordedConnect(list(script))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
        assert not server.mismatches, server.mismatches
        assert not server.script, f"requests never made: {[e['request'] for e in server.script]}"


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["connectors", *args], env=env or ENV)


def test_apply_creates_then_leaves_alone_then_updates(connect, tmp_path):
    server = connect(
        "get-config-404", "put-config-201", "get-status-404",  # created, status not yet written
        "get-config-200", "get-status-running",  # same file again: no PUT
        "get-config-200", "put-config-200", "get-status-running",  # heartbeat changed
    )  # fmt: skip
    created = cli("apply", "--url", server.url, "--dir", str(CONNECTORS))
    assert created.exit_code == 0, created.output
    assert "inventory-postgres       created" in created.output
    assert "PENDING" in created.output

    unchanged = cli("apply", "--url", server.url, "--dir", str(CONNECTORS))
    assert unchanged.exit_code == 0, unchanged.output
    assert "inventory-postgres       unchanged" in unchanged.output
    assert "all connectors and tasks RUNNING" in unchanged.output

    config = json.loads((CONNECTORS / "inventory-postgres.json").read_text())
    (tmp_path / "inventory-postgres.json").write_text(
        json.dumps(config | {"heartbeat.interval.ms": "10000"})
    )
    updated = cli("apply", "--url", server.url, "--dir", str(tmp_path))
    assert updated.exit_code == 0, updated.output
    assert "inventory-postgres       updated: heartbeat.interval.ms" in updated.output


def test_apply_fills_env_placeholders_and_leaves_file_provider_to_connect(connect):
    # The recorded PUT body has the host from the environment and the ${file:...} as written;
    # the server notes any other body as a mismatch.
    server = connect("get-config-404", "put-config-201", "get-status-running")
    result = cli("apply", "--url", server.url, "--dir", str(CONNECTORS))
    assert result.exit_code == 0, result.output
    assert "not set here" not in result.output


def test_status_reports_the_failed_task_with_its_trace(connect):
    server = connect("get-status-failed")
    result = cli("status", "--url", server.url, "--dir", str(CONNECTORS))
    assert result.exit_code == 1
    assert "task 0 FAILED on connect-0.connect:8083" in result.output
    assert "task 0 trace:" in result.output
    assert 'replication slot "cdc_cache_pgserver1" is active' in result.output
    assert "FAILED or missing: inventory-postgres" in result.output


def test_status_of_a_connector_connect_does_not_know_is_missing(connect):
    server = connect("get-status-404")
    result = cli("status", "--url", server.url, "--dir", str(CONNECTORS))
    assert result.exit_code == 1
    assert "MISSING" in result.output
    assert "cdc-cache connectors apply" in result.output


def test_wait_polls_until_running(connect):
    server = connect("get-status-unassigned", "get-status-running")
    result = cli("status", "--url", server.url, "--dir", str(CONNECTORS), "--wait", "30")
    assert result.exit_code == 0, result.output
    assert "inventory-postgres       RUNNING    task 0 RUNNING" in result.output


def test_409_is_retried_with_backoff_until_it_clears(connect):
    server = connect(
        "get-config-404", "put-config-409", "put-config-409", "put-config-201", "get-status-running"
    )
    result = cli("apply", "--url", server.url, "--dir", str(CONNECTORS))
    assert result.exit_code == 0, result.output
    assert "inventory-postgres       created" in result.output
    assert result.stderr.count("409 Cannot complete request because of a conflicting") == 2
    assert "retrying in" in result.stderr


def test_409_that_outlasts_the_timeout_names_connects_message(connect):
    server = connect("put-config-409")
    client = ConnectClient(UrllibTransport(server.url), conflict_timeout_s=0)
    with pytest.raises(ConnectRestError) as caught:
        client.put_config("inventory-postgres", exchange("put-config-409")["request"]["body"])
    message = str(caught.value)
    assert f"PUT {server.url}/connectors/inventory-postgres/config answered 409" in message
    assert "conflicting operation (e.g. worker rebalance)" in message
    assert "retry later" in message


def test_backoff_grows_between_conflicts(connect):
    server = connect("put-config-409", "put-config-409", "put-config-409", "put-config-201")
    slept: list[float] = []
    client = ConnectClient(
        UrllibTransport(server.url),
        backoff=Backoff(initial=0.01, maximum=1.0, jitter=0),
        sleep=slept.append,
    )
    assert client.put_config("inventory-postgres", exchange("put-config-201")["request"]["body"])
    assert slept == [0.01, 0.02, 0.04]


def test_a_refused_config_names_the_file_and_connects_message(connect):
    server = connect("get-config-404", "put-config-400")
    result = cli("apply", "--url", server.url, "--dir", str(CONNECTORS))
    assert result.exit_code == 2
    assert str(CONNECTORS / "inventory-postgres.json") in result.stderr
    assert "answered 400" in result.stderr
    assert "Connection to pg.internal:5432 refused" in result.stderr
    assert "fix the connector file" in result.stderr


def test_connection_refused_asks_whether_connect_runs_there():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = cli("status", "--url", url, "--dir", str(CONNECTORS))
    assert result.exit_code == 2
    assert f"is Kafka Connect running at {url}?" in result.stderr


# --- pure parts --------------------------------------------------------------------------


def test_env_placeholders_resolve_only_when_set_and_other_providers_pass_through():
    config = {
        "a": "${env:HOST}:${env:PORT}",
        "b": "${file:/opt/kafka/secrets/pg.properties:password}",
        "c": "${env:UNSET}",
        "d": "${envx:HOST} $HOST {env:HOST}",
    }
    resolved, unresolved = resolve_env(config, {"HOST": "db", "PORT": "5432"})
    assert resolved == config | {"a": "db:5432"}
    assert unresolved == ("UNSET",)
    line = ApplyResult("c", "created", (), unresolved).format()
    assert "${env:UNSET} is not set here, so Kafka Connect must resolve it" in line


def test_changed_keys_ignores_the_name_connect_adds():
    desired = {"x": "1", "y": "2"}
    assert changed_keys(desired | {"name": "c"}, desired) == ()
    assert changed_keys({"x": "1", "z": "3", "name": "c"}, desired) == ("y", "z")


def test_the_repository_connector_files_load():
    names = [c.name for c in load_connectors(ROOT / "connectors")]
    assert names == [
        "inventory-mysql-avro",
        "inventory-mysql-routed",
        "inventory-mysql",
        "inventory-postgres",
    ]


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ('{"tasks.max": 1}', "write these values as JSON strings: tasks.max"),
        ('{"name": "other"}', "name 'other' differs from the file name"),
        ('{\n  "a": "1",\n}', "c.json:3: not valid JSON"),
        ('["a"]', "expected a JSON object"),
    ],
)
def test_bad_connector_files_are_refused_with_the_fix(tmp_path, content, complaint):
    (tmp_path / "c.json").write_text(content)
    with pytest.raises(ConfigError, match=complaint):
        load_connectors(tmp_path)


def test_only_names_an_unknown_connector(tmp_path):
    with pytest.raises(ConfigError, match="--only nope: no such file"):
        load_connectors(CONNECTORS, ["nope"])
    with pytest.raises(ConfigError, match="no connector files"):
        load_connectors(tmp_path)


def test_status_document_parses_and_judges():
    failed = parse_status("c", exchange("get-status-failed")["response"]["body"])
    assert failed.failed and not failed.running
    assert failed.tasks[0].trace is not None
    running = parse_status("c", exchange("get-status-running")["response"]["body"])
    assert running.running and not running.failed
    unassigned = parse_status("c", exchange("get-status-unassigned")["response"]["body"])
    assert not unassigned.running and not unassigned.failed
    assert parse_status("c", None).failed
    assert not parse_status("c", None, exists=True).failed
    with pytest.raises(ConnectRestError, match="unexpected status document"):
        parse_status("c", {"state": "RUNNING"})


def test_wait_gives_up_on_a_failure_that_persists():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    failed = exchange("get-status-failed")["response"]["body"]
    statuses = read_status(lambda _: failed, ["c"], 300, sleep=sleep, clock=lambda: now[0])
    assert statuses == [
        ConnectorStatus(
            "c",
            "RUNNING",
            "connect-0.connect:8083",
            None,
            (TaskStatus(0, "FAILED", "connect-0.connect:8083", statuses[0].tasks[0].trace),),
        )
    ]
    assert 5 <= now[0] < 10


def test_wait_shows_progress_on_stderr_and_json_reports_on_stdout(connect):
    server = connect("get-status-unassigned", "get-status-running")
    result = cli("status", "--url", server.url, "--dir", str(CONNECTORS), "--wait", "30", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "connectors running: 0/1 (0 %) waiting for inventory-postgres"
    ]
    report = json.loads(result.stdout)
    assert report["exit_code"] == 0 and report["applied"] == []
    (status,) = report["connectors"]
    assert (status["name"], status["state"], status["running"]) == (
        "inventory-postgres",
        "RUNNING",
        True,
    )
    assert status["tasks"][0]["state"] == "RUNNING"


def test_apply_json_lists_what_was_applied(connect):
    server = connect("get-config-404", "put-config-201", "get-status-running")
    result = cli("apply", "--url", server.url, "--dir", str(CONNECTORS), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(a["name"], a["action"]) for a in report["applied"]] == [
        ("inventory-postgres", "created")
    ]
