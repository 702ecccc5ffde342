"""Operator mistakes, through the real processes: exit code 2 and one line naming the
setting and the fix (never a traceback); junk in the mode keys said as such; librdkafka's
lines routed through the JSON log while the brokers are down."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from cdc_cache.core.keys import ns
from cdc_cache.tools.devstack.process import free_port
from tests.integration.probes import admin_get
from tests.integration.services import ROOT, Service, worker
from tests.integration.topics import produce, unique_topic
from tests.integration.waiting import wait_until
from tests.workload import RULES_YAML, Workload

pytestmark = pytest.mark.integration

DEEP = 3000


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run(*args: str, timeout: float = 60) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "cdc_cache", *args],
        check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    return done.returncode, (done.stdout + done.stderr).splitlines()


def worker_args(tmp_path: Path, *extra: str, rules: str | None = None) -> list[str]:
    rules_file = tmp_path / "rules.yaml"
    if rules is None:
        # Wire values chosen explicitly: the rules-version notice is no part of the error.
        rules_file.write_text(RULES_YAML.replace("defaults: {", "defaults: {values: wire, ", 1))
    return [
        "run", "--rules", rules or str(rules_file), "--topic", "t.inventory.stock",
        "--brokers", f"127.0.0.1:{free_port()}", "--recovery-dir", str(tmp_path / "rec"),
        *extra,
    ]  # fmt: skip


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


Case = Callable[[Path, int], list[str]]
CASES: dict[str, tuple[Case, str]] = {
    "admin port in use": (
        lambda tmp, busy: worker_args(tmp, "--metrics-port", str(busy)),
        "metrics_port",
    ),
    "rules file not UTF-8": (
        lambda tmp, _: worker_args(
            tmp, rules=write(tmp / "r.yaml", RULES_YAML.replace("stock:", "st\xe9ck:").encode("latin-1"))
        ),
        "not UTF-8 text",
    ),
    "rules nested thousands deep": (
        lambda tmp, _: worker_args(
            tmp, rules=write(tmp / "r.yaml", b"tables: " + b"[" * DEEP + b"]" * DEEP)
        ),
        "nested too deeply",
    ),
    "settings file not UTF-8": (
        lambda tmp, _: [
            *worker_args(tmp),
            "--config", write(tmp / "s.yaml", b"dlq_topic: d\xe9ad\n"),
        ],
        "settings file",
    ),
    "settings nested thousands deep": (
        lambda tmp, _: [
            *worker_args(tmp),
            "--config", write(tmp / "s.yaml", b"kafka: " + b"[" * DEEP + b"]" * DEEP),
        ],
        "nested too deeply",
    ),
    "worker redis_url of another scheme": (
        lambda tmp, _: worker_args(tmp, "--redis-url", "http://user:pw@cache:6379/0"),
        "--redis-url: redis_url",
    ),
    "mode get with a redis_url of another scheme": (
        lambda tmp, _: ["mode", "get", "--redis-url", "cache:6379"],
        "redis_url",
    ),
    "gateway port in use": (
        lambda tmp, busy: [
            "gateway", "--secret", "k", "--port", str(busy),
            "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
        ],
        "CDC_CACHE_GATEWAY_PORT",
    ),
    "gateway redis_url of another scheme": (
        lambda tmp, _: ["gateway", "--secret", "k", "--redis-url", "https://cache:6379"],
        "--redis-url: redis_url",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_an_operator_mistake_is_exit_2_and_one_line(tmp_path, listening, case):
    make, named = CASES[case]
    code, lines = run(*make(tmp_path, listening))
    assert code == 2, "\n".join(lines)
    assert len(lines) == 1 and "Traceback" not in lines[0], "\n".join(lines)
    assert named in lines[0], lines[0]
    assert "pw@" not in lines[0]  # a URL is shown without its password


def test_junk_in_the_mode_keys_is_named_by_mode_get(redis_server, redis_client):
    url = redis_server.address()
    redis_client.hset(ns().mode, mapping={"mode": "ttl", "since_ms": "yesterday"})
    code, lines = run("mode", "get", "--redis-url", url)
    assert code == 2 and len(lines) == 1, lines
    assert f"{ns().mode} field since_ms holds 'yesterday'" in lines[0]
    assert f"DEL {ns().mode}" in lines[0]

    redis_client.delete(ns().mode)
    redis_client.set(ns().mode, "not a hash")
    code, lines = run("mode", "get", "--redis-url", url)
    assert code == 2 and len(lines) == 1, lines
    assert f"{ns().mode} holds another type" in lines[0] and "Redis at" not in lines[0]


def test_junk_in_the_mode_keys_is_said_as_such_and_the_worker_stays_ready(
    broker, redis_server, redis_client, tmp_path
):
    topic = unique_topic()
    broker.create_topics({topic: 1})
    produce(broker.bootstrap, [m for tx in Workload(topic=topic).transactions(20) for m in tx])
    redis_client.hset(ns().mode_flag, "not", "a string")  # a flag of the wrong type
    port = free_port()
    service = worker(tmp_path, broker.bootstrap, redis_server.address(), [topic],
                     env={"CDC_CACHE_METRICS_PORT": str(port)})  # fmt: skip
    service.start()
    try:
        wait_until("ready", lambda: _status(port, "/readyz") == 200, alive=[service], interval=0.2)
        view = orjson.loads(admin_get(port, "/mode")[1])
        assert f"{ns().mode_flag} holds another type" in view["problem"]
        assert "cdc-cache mode set auto" in view["problem"]

        redis_client.delete(ns().mode_flag)
        redis_client.set(ns().mode_flag, "sometimes")
        wait_until(
            "the new junk named",
            lambda: "'sometimes'" in _problem(port),
            alive=[service],
            interval=0.2,
        )
        assert _status(port, "/readyz") == 200

        redis_client.set(ns().mode_flag, "ttl")
        # One tick obeys the flag, then clears the problem: wait for both.
        wait_until(
            "the flag obeyed, the problem gone",
            lambda: (view := _view(port))["mode"] == "ttl" and "problem" not in view,
            alive=[service],
            interval=0.2,
        )
    finally:
        service.stop()
    log = service.log.read_text()
    assert "Redis unavailable" not in log
    assert log.count("a mode key cannot be read") == 2  # once per distinct problem
    assert "the mode keys are readable again" in log


def _status(port: int, path: str) -> int:
    try:
        return admin_get(port, path)[0]
    except OSError:  # not listening yet
        return 0


def _view(port: int) -> dict[str, object]:
    return dict(orjson.loads(admin_get(port, "/mode")[1]))


def _problem(port: int) -> str:
    return str(_view(port).get("problem", ""))


def test_librdkafka_lines_go_through_the_json_log_sparingly_while_brokers_are_down(tmp_path):
    service = Service(
        [sys.executable, "-m", "cdc_cache", *worker_args(tmp_path)], tmp_path / "worker.log"
    )
    service.start()
    try:
        wait_until(
            "a librdkafka line in the log",
            lambda: "cdc_cache.kafka" in service.log.read_text(),
            alive=[service],
            interval=0.2,
        )
        time.sleep(5)  # librdkafka retries its clients several times a second meanwhile
    finally:
        service.stop()
    lines = service.log.read_text().splitlines()
    parsed = [orjson.loads(line) for line in lines]  # every line is JSON: none printed raw
    routed = [line for line in parsed if line["logger"] == "cdc_cache.kafka"]
    assert 1 <= len(routed) <= 3, lines
    assert routed[0]["facility"] and routed[0]["msg"].startswith("librdkafka: ")
    assert any(line["left_out"] > 10 for line in routed[1:]) or len(routed) == 1
