"""The worker's admin HTTP API: metrics, health, readiness and the cache mode.

``GET /metrics`` (Prometheus), ``GET /healthz`` (the process answers), ``GET /readyz``
(Redis answers, the partitions were caught up once and every source lineage can be told;
while the worker starts, which step it waits for; with the source lineages' details),
``GET /mode`` and ``PUT /mode``
(body ``auto``, ``cdc`` or ``ttl``; needs ``Authorization: Bearer <admin_token>``), and
the dead-letter page and API under ``/dlq`` (see :mod:`cdc_cache.app.dlq_page`).
A stdlib server in a daemon thread: a handful of requests a minute needs nothing more.

Clients cannot hold it: a request must arrive whole (line, headers, body) within
``REQUEST_TIMEOUT_S`` or its connection is closed, at most ``MAX_CONNECTIONS`` are served
at once (more are answered 503 at once, without a thread), a malformed
``Content-Length`` is a 400, and a client that goes away is a debug line, not a traceback.
"""

from __future__ import annotations

import hmac
import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cdc_cache.app.dlq_page import MAX_BODY, DlqBackend, DlqPages, Request
from cdc_cache.core.errors import ConfigError
from cdc_cache.mode.controller import Flag

log = logging.getLogger("cdc_cache.admin")

REQUEST_TIMEOUT_S: Final = 10.0
MAX_CONNECTIONS: Final = 32
_MAX_BODY = 64
_BUSY: Final = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: 45\r\nConnection: close\r\n\r\n"
    b'{"error": "too many connections; try again"}\n'
)
_NO_TOKEN = (
    "changing the mode over HTTP is disabled: set admin_token (CDC_CACHE_ADMIN_TOKEN) "
    "on the worker, or use `cdc-cache mode set`"
)


Page = Callable[[], tuple[HTTPStatus, bytes, str]]
"""Another process's own GET page: status, body and content type."""


class ModeBackend(Protocol):
    """What the API needs from the worker's mode runtime."""

    def view(self) -> dict[str, object]: ...

    def ready(self) -> tuple[bool, dict[str, bool]]: ...

    def set_flag(self, flag: Flag) -> None: ...


class Starting(Exception):
    """The worker has not started its flow yet, so there is no mode to change."""


class StartupBackend:
    """The API's backend while the worker starts, then the mode runtime it hands over.

    The admin port opens first so that ``/healthz`` answers (a liveness probe must not
    kill a worker waiting for its topics) and ``/metrics`` shows the waits' retries;
    ``/readyz`` says which of :attr:`STEPS` are done until the flow runs.
    """

    STEPS = ("topics", "dlq_topic", "redis", "flow")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: set[str] = set()
        self._backend: ModeBackend | None = None
        self._details: Callable[[], dict[str, object]] | None = None

    def passed(self, step: str) -> None:
        """``step`` (one of :attr:`STEPS`) is done."""
        assert step in self.STEPS, step
        with self._lock:
            self._done.add(step)

    def started(
        self, backend: ModeBackend, details: Callable[[], dict[str, object]] | None = None
    ) -> None:
        """The flow runs: from now on ``backend`` answers; ``details`` adds to ``/readyz``."""
        with self._lock:
            self._done.add("flow")
            self._backend = backend
            self._details = details

    def details(self) -> dict[str, object]:
        """What ``/readyz`` shows beside its checks (the source lineages, once started)."""
        with self._lock:
            details = self._details
        return details() if details is not None else {}

    def waiting_for(self) -> str | None:
        """The first step not done yet, or None once started."""
        with self._lock:
            return next((step for step in self.STEPS if step not in self._done), None)

    def ready(self) -> tuple[bool, dict[str, bool]]:
        with self._lock:
            backend, done = self._backend, set(self._done)
        if backend is not None:
            return backend.ready()
        return False, {step: step in done for step in self.STEPS}

    def view(self) -> dict[str, object]:
        with self._lock:
            backend = self._backend
        if backend is not None:
            return backend.view()
        return {"starting": True, "waiting_for": self.waiting_for()}

    def set_flag(self, flag: Flag) -> None:
        with self._lock:
            backend = self._backend
        if backend is None:
            msg = (
                f"the worker is starting (waiting for {self.waiting_for()}); "
                "set the flag with `cdc-cache mode set` meanwhile"
            )
            raise Starting(msg)
        backend.set_flag(flag)


class AdminServer:
    """Serves the admin API on ``port`` (0 picks a free one) until :meth:`close`."""

    def __init__(
        self,
        backend: ModeBackend,
        port: int,
        token: str | None,
        host: str = "",
        dlq: DlqBackend | None = None,
        *,
        details: Callable[[], dict[str, object]] | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        more_pages: Mapping[str, Page] | None = None,
    ) -> None:
        """``more_pages`` adds GET pages by path (``cdc-cache inspect``'s report)."""
        pages = DlqPages(dlq, token) if dlq is not None else None
        handler = _handler(backend, token, pages, timeout_s, details, more_pages=more_pages or {})
        try:
            server = _Server((host, port), handler, max_connections)
        except OSError as exc:
            msg = (
                f"metrics_port {port}: cannot listen there ({exc.strerror}); set metrics_port "
                "(--metrics-port, CDC_CACHE_METRICS_PORT) to a free port"
            )
            raise ConfigError(msg) from None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="cdc-admin", daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def start(self) -> AdminServer:
        """Start serving in a daemon thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; errors go to the log."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("admin connection refused: too many open", extra={"peer": client_address})
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that left or stalled is routine; anything else is logged, as JSON."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("admin client went away", extra={"error": repr(error)})
        else:
            log.error("admin request failed", exc_info=True)


class _DeadlineReader(io.RawIOBase):
    """The socket's reads, each given only what is left of the request's time."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            msg = "the request did not arrive in time"
            raise TimeoutError(msg)
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


def _handler(
    backend: ModeBackend,
    token: str | None,
    pages: DlqPages | None,
    limit_s: float,
    details: Callable[[], dict[str, object]] | None,
    *,
    more_pages: Mapping[str, Page],
) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        timeout = limit_s  # each socket operation; reading the request is timed as a whole

        def setup(self) -> None:
            """Reads share one deadline: the whole request, not each read, is timed."""
            super().setup()
            self.rfile.close()  # the socket closes only once every file made from it is
            self._reader = _DeadlineReader(self.connection, time.monotonic() + limit_s)
            self.rfile = io.BufferedReader(self._reader)

        def _body(self, limit: int) -> bytes | None:
            """The request body, or None once a 400/413 has been sent for it."""
            given = self.headers.get("Content-Length", "0").strip()
            if not given.isascii() or not given.isdigit():
                self._json(HTTPStatus.BAD_REQUEST, {"error": "Content-Length is not a number"})
                return None
            length = int(given)
            if length > limit:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return None
            body = self.rfile.read(length) if length > 0 else b""
            self._reader.deadline = float("inf")  # read: the answer may take its time
            self.connection.settimeout(limit_s)
            return body

        def _dlq(self) -> bool:
            """Serve a /dlq request; False when the path is not the DLQ's."""
            path, _, query = self.path.partition("?")
            if pages is None or not (path == "/dlq" or path.startswith("/dlq/")):
                return False
            body = self._body(MAX_BODY)
            if body is None:
                return True
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer = pages.handle(Request(self.command, path, query, headers, body))
            self._send(answer.status, answer.body, answer.content_type, answer.headers)
            return True

        def do_POST(self) -> None:
            if not self._dlq():
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})

        def do_GET(self) -> None:
            if self._dlq():
                return
            if self.path in more_pages:
                self._send(*more_pages[self.path]())
            elif self.path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._json(HTTPStatus.OK, {"status": "ok"})
            elif self.path == "/readyz":
                ready, checks = backend.ready()
                status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
                extra = details() if details is not None else {}
                self._json(status, {"ready": ready, "checks": checks, **extra})
            elif self.path == "/mode":
                self._json(HTTPStatus.OK, backend.view())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})

        def do_PUT(self) -> None:
            if self._dlq():
                return
            if self.path != "/mode":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
                return
            if expected is None:
                self._json(HTTPStatus.FORBIDDEN, {"error": _NO_TOKEN})
                return
            given = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                self._json(
                    HTTPStatus.UNAUTHORIZED,
                    {"error": "send the worker's admin_token as 'Authorization: Bearer <token>'"},
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            raw = self._body(_MAX_BODY)
            if raw is None:
                return
            body = raw.decode(errors="replace").strip().lower()
            try:
                flag = Flag(body)
            except ValueError:
                self._json(
                    HTTPStatus.BAD_REQUEST,
                    {"error": f"body must be auto, cdc or ttl, not {body!r}"},
                )
                return
            try:
                backend.set_flag(flag)
            except Starting as exc:
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
                return
            log.warning("mode flag set over HTTP", extra={"flag": flag.value})
            self._json(HTTPStatus.OK, {**backend.view(), "flag": flag.value})

        def _json(
            self, status: HTTPStatus, doc: object, headers: dict[str, str] | None = None
        ) -> None:
            self._send(status, orjson.dumps(doc), "application/json", headers)

        def _send(
            self,
            status: HTTPStatus,
            body: bytes,
            content_type: str,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("admin request: " + format, *args)

    return Handler
