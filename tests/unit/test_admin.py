"""The admin API: health, readiness, metrics, and who may change the mode."""

from __future__ import annotations

import http.client
import socket
import struct
import time
from collections.abc import Iterator

import orjson
import pytest

from cdc_cache.app.admin import AdminServer
from cdc_cache.app.routes import StartupBackend
from cdc_cache.core import metrics
from cdc_cache.core.errors import ConfigError
from cdc_cache.mode.controller import Flag


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
        status, body = call(server, "PUT", "/mode", "ttl", {"Authorization": "Bearer s3cret"})
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


@pytest.fixture
def strict(runtime: FakeRuntime) -> Iterator[AdminServer]:
    """A server with a short request deadline and room for two connections."""
    server = AdminServer(
        runtime, 0, "s3cret", host="127.0.0.1", timeout_s=0.5, max_connections=2
    ).start()
    try:
        yield server
    finally:
        server.close()


def connect(server: AdminServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def closed_by_server(sock: socket.socket, within_s: float) -> float:
    """Seconds until the server closed ``sock`` (fails if it did not within ``within_s``)."""
    started = time.monotonic()
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_clients_that_send_nothing_are_cut_off_and_over_the_cap_are_told_at_once(strict):
    idle = [connect(strict), connect(strict)]
    time.sleep(0.1)  # both accepted: the cap is reached
    busy = connect(strict)
    started = time.monotonic()
    answer = busy.recv(4096)
    assert answer.startswith(b"HTTP/1.0 503") and b"too many connections" in answer
    assert time.monotonic() - started < 0.4  # at once, not after the idle ones time out
    assert all(closed_by_server(sock, within_s=5) < 5 for sock in idle)
    assert call(strict, "GET", "/healthz")[0] == 200  # their slots are free again


def test_a_request_dribbled_byte_by_byte_is_cut_off_at_the_deadline(strict):
    sock = connect(strict)
    started = time.monotonic()
    with pytest.raises(OSError):  # the server closes it: a send or recv fails
        for byte in b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"a" * 200:
            sock.send(bytes([byte]))
            time.sleep(0.05)  # each byte in time, the request as a whole too late
        sock.send(b"\r\n\r\n")
        assert sock.recv(4096) == b""
        raise ConnectionResetError
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "٣", " "])
def test_a_malformed_content_length_is_400(with_token, runtime, length):
    sock = connect(with_token)
    sock.sendall(
        b"PUT /mode HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n"
        + f"Content-Length: {length}\r\n\r\nttl".encode()
    )
    answer = b"".join(iter(lambda: sock.recv(4096), b""))
    assert answer.startswith(b"HTTP/1.0 400"), answer
    assert b"Content-Length is not a number" in answer
    assert runtime.flags == []


def test_a_client_that_goes_away_prints_no_traceback(with_token, capsys):
    for request in (b"GET /healthz HTTP/1.0\r\nHost: x", b"PUT /mode HTTP/1.0\r\n"
                    b"Authorization: Bearer s3cret\r\nContent-Length: 30\r\n\r\nt"):  # fmt: skip
        sock = connect(with_token)
        sock.sendall(request)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, mid-request
    time.sleep(0.5)
    assert call(with_token, "GET", "/healthz")[0] == 200
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Exception" not in captured.err


def test_a_port_in_use_is_a_config_error_naming_the_setting(with_token, runtime):
    with pytest.raises(ConfigError, match=r"^metrics_port \d+: cannot listen there .*free port"):
        AdminServer(runtime, with_token.port, None, host="127.0.0.1")


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


def test_another_process_adds_its_own_pages(runtime):
    """How ``cdc-cache inspect`` serves its report next to /metrics and /healthz."""
    from http import HTTPStatus

    page = (HTTPStatus.OK, b"report\n", "text/plain; charset=utf-8")
    server = AdminServer(runtime, 0, None, host="127.0.0.1", more_pages={"/": lambda: page}).start()
    try:
        assert call(server, "GET", "/") == (200, b"report\n")
        assert call(server, "GET", "/healthz")[0] == 200
        assert call(server, "GET", "/other")[0] == 404
    finally:
        server.close()
