"""The worker's admin HTTP API: metrics, health, readiness and the cache mode.

``GET /metrics`` (Prometheus), ``GET /healthz`` (the process answers), ``GET /readyz``
(Redis answers, the partitions were caught up once and every source lineage can be told;
while the worker starts, which step it waits for; with the source lineages' details),
``GET /mode`` and ``PUT /mode``
(body ``auto``, ``cdc`` or ``ttl``; needs ``Authorization: Bearer <admin_token>``), and
the dead-letter page and API under ``/dlq`` (see :mod:`cdc_cache.dlq_web`).
A stdlib server in a daemon thread: a handful of requests a minute needs nothing more.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cdc_cache.dlq_web import MAX_BODY, DlqBackend, DlqPages, Request
from cdc_cache.mode import Flag

log = logging.getLogger("cdc_cache.admin")

_MAX_BODY = 64
_NO_TOKEN = (
    "changing the mode over HTTP is disabled: set admin_token (CDC_CACHE_ADMIN_TOKEN) "
    "on the worker, or use `cdc-cache mode set`"
)


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
    ) -> None:
        pages = DlqPages(dlq, token) if dlq is not None else None
        server = ThreadingHTTPServer((host, port), _handler(backend, token, pages, details))
        server.daemon_threads = True
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


def _handler(
    backend: ModeBackend,
    token: str | None,
    pages: DlqPages | None,
    details: Callable[[], dict[str, object]] | None,
) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        def _dlq(self) -> bool:
            """Serve a /dlq request; False when the path is not the DLQ's."""
            path, _, query = self.path.partition("?")
            if pages is None or not (path == "/dlq" or path.startswith("/dlq/")):
                return False
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return True
            body = self.rfile.read(length) if length > 0 else b""
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
            if self.path == "/metrics":
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
            length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
            body = self.rfile.read(length).decode(errors="replace").strip().lower()
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
