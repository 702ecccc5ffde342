"""The admin API: health, readiness, metrics, and who may change the mode."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import orjson
import pytest

from cdc_cache import metrics
from cdc_cache.admin import AdminServer, StartupBackend
from cdc_cache.mode import Flag


class FakeRuntime:
    def __init__(self) -> None:
        self.flags: list[Flag] = []
        self.is_ready = False

    def view(self) -> dict[str, object]:
        return {"mode": "cdc", "flag": "auto", "reason": "worker started"}

    def ready(self) -> tuple[bool, dict[str, bool]]:
        return self.is_ready, {"redis": self.is_ready, "kafka_caught_up": True}

    def set_flag(self, flag: Flag) -> None:
        self.flags.append(flag)


def serve(runtime: FakeRuntime, token: str | None) -> Iterator[AdminServer]:
    server = AdminServer(runtime, 0, token, host="127.0.0.1").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def with_token(runtime: FakeRuntime) -> Iterator[AdminServer]:
    yield from serve(runtime, "s3cret")


@pytest.fixture
def without_token(runtime: FakeRuntime) -> Iterator[AdminServer]:
    yield from serve(runtime, None)


def call(server: AdminServer, method: str, path: str, body: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


def test_put_mode_with_the_token_sets_the_flag(with_token, runtime):
    status, body = call(with_token, "PUT", "/mode", "ttl", {"Authorization": "Bearer s3cret"})
    assert status == 200 and orjson.loads(body)["flag"] == "ttl"
    assert runtime.flags == [Flag.TTL]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "s3cret", "Bearer s3cret2"])
def test_put_mode_without_the_right_token_is_401(with_token, runtime, header):
    headers = {"Authorization": header} if header else {}
    status, body = call(with_token, "PUT", "/mode", "ttl", headers)
    assert status == 401 and b"admin_token" in body
    assert runtime.flags == []


def test_put_mode_is_403_when_no_token_is_configured(without_token, runtime):
    status, body = call(without_token, "PUT", "/mode", "ttl", {"Authorization": "Bearer x"})
    assert status == 403 and b"CDC_CACHE_ADMIN_TOKEN" in body
    assert runtime.flags == []


def test_put_mode_rejects_an_unknown_mode(with_token, runtime):
    status, body = call(with_token, "PUT", "/mode", "off", {"Authorization": "Bearer s3cret"})
    assert status == 400 and b"auto, cdc or ttl" in body


def test_reads_need_no_token(without_token, runtime):
    assert call(without_token, "GET", "/healthz")[0] == 200
    assert call(without_token, "GET", "/readyz")[0] == 503
    runtime.is_ready = True
    assert call(without_token, "GET", "/readyz")[0] == 200
    status, body = call(without_token, "GET", "/mode")
    assert status == 200 and orjson.loads(body)["mode"] == "cdc"
    metrics.MODE.labels("cdc").set(1)
    status, body = call(without_token, "GET", "/metrics")
    assert status == 200 and b'cdc_cache_mode{mode="cdc"} 1.0' in body
    assert call(without_token, "GET", "/nope")[0] == 404


def test_a_starting_worker_is_alive_not_ready_and_names_its_wait(runtime: FakeRuntime) -> None:
    startup = StartupBackend()
    server = AdminServer(startup, 0, "s3cret", host="127.0.0.1").start()
    try:
        assert call(server, "GET", "/healthz")[0] == 200
        status, body = call(server, "GET", "/readyz")
        assert status == 503
        assert orjson.loads(body)["checks"] == {
            "topics": False, "dlq_topic": False, "redis": False, "flow": False
        }  # fmt: skip
        startup.passed("topics")
        startup.passed("dlq_topic")
        assert orjson.loads(call(server, "GET", "/readyz")[1])["checks"]["dlq_topic"] is True
        assert orjson.loads(call(server, "GET", "/mode")[1])["waiting_for"] == "redis"
        status, body = call(
            server, "PUT", "/mode", "ttl", {"Authorization": "Bearer s3cret"}
        )
        assert status == 503 and b"waiting for redis" in body
        assert call(server, "GET", "/metrics")[0] == 200
        startup.passed("redis")
        startup.started(runtime)
        runtime.is_ready = True
        status, body = call(server, "GET", "/readyz")
        assert status == 200 and orjson.loads(body)["checks"]["redis"] is True
        assert call(server, "PUT", "/mode", "ttl", {"Authorization": "Bearer s3cret"})[0] == 200
        assert runtime.flags == [Flag.TTL]
    finally:
        server.close()


def test_readyz_shows_the_source_lineages_once_the_worker_runs(runtime: FakeRuntime) -> None:
    startup = StartupBackend()
    server = AdminServer(startup, 0, None, host="127.0.0.1", details=startup.details).start()
    try:
        assert "lineage" not in orjson.loads(call(server, "GET", "/readyz")[1])
        lineage = {"sources": {"db": {"epochs": {"t[0]": 1}, "held": {}}}}
        runtime.is_ready = True
        startup.started(runtime, lambda: {"lineage": lineage})
        status, body = call(server, "GET", "/readyz")
        assert status == 200 and orjson.loads(body)["lineage"] == lineage
    finally:
        server.close()
