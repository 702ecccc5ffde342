"""The worker's admin HTTP server: the route table (:mod:`cdc_cache.app.routes`) served.

A stdlib server in a daemon thread: a handful of requests a minute needs nothing more.

Clients cannot hold it: a request must arrive whole (line, headers, body) within
``REQUEST_TIMEOUT_S`` or its connection is closed, at most ``MAX_CONNECTIONS`` are served
at once (more are answered 503 at once, without a thread), a malformed
``Content-Length`` is a 400, and a client that goes away is a debug line, not a traceback.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from cdc_cache.app.dlq_page import MAX_BODY, DlqBackend, DlqPages
from cdc_cache.app.routes import (
    ModeBackend,
    Page,
    Request,
    Response,
    Route,
    Routes,
    json_response,
    mode_routes,
    not_found,
)
from cdc_cache.core.errors import ConfigError

log = logging.getLogger("cdc_cache.admin")

REQUEST_TIMEOUT_S: Final = 10.0
MAX_CONNECTIONS: Final = 32
_BUSY: Final = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: 45\r\nConnection: close\r\n\r\n"
    b'{"error": "too many connections; try again"}\n'
)


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
        routes = mode_routes(backend, token, details)
        for path, page in (more_pages or {}).items():
            routes.add("GET", path, Route(_page(page)))
        if dlq is not None:
            routes.under("/dlq", Route(DlqPages(dlq, token).handle, body_limit=MAX_BODY))
        handler = _handler(routes, timeout_s)
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


def _page(page: Page) -> Callable[[Request], Response]:
    def answer(request: Request) -> Response:
        return Response(*page())

    return answer


def _handler(routes: Routes, limit_s: float) -> type[BaseHTTPRequestHandler]:
    """The HTTP side of the routes: reading a request within its time, sending an answer."""

    class Handler(BaseHTTPRequestHandler):
        timeout = limit_s  # each socket operation; reading the request is timed as a whole

        def setup(self) -> None:
            """Reads share one deadline: the whole request, not each read, is timed."""
            super().setup()
            self.rfile.close()  # the socket closes only once every file made from it is
            self._reader = _DeadlineReader(self.connection, time.monotonic() + limit_s)
            self.rfile = io.BufferedReader(self._reader)

        def do_GET(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            route = routes.find(self.command, self.path)
            if route is None:
                self._send(not_found(self.path))
                return
            path, _, query = self.path.partition("?")
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = Request(self.command, path, query, headers)
            refused = route.check(request) if route.check is not None else None
            if refused is not None:
                self._send(refused)
                return
            if route.body_limit is not None:
                body = self._body(route.body_limit)
                if body is None:
                    return
                request = replace(request, body=body)
            self._send(route.answer(request))

        def _body(self, limit: int) -> bytes | None:
            """The request body, or None once a 400/413 has been sent for it."""
            given = self.headers.get("Content-Length", "0").strip()
            if not given.isascii() or not given.isdigit():
                self._send(
                    json_response(
                        HTTPStatus.BAD_REQUEST, {"error": "Content-Length is not a number"}
                    )
                )
                return None
            length = int(given)
            if length > limit:
                self._send(
                    json_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                )
                return None
            body = self.rfile.read(length) if length > 0 else b""
            self._reader.deadline = float("inf")  # read: the answer may take its time
            self.connection.settimeout(limit_s)
            return body

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("admin request: " + format, *args)

    return Handler
