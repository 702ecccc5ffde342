"""The admin API's routes: (method, path) to an answer, each a function of the request.

``GET /metrics`` (Prometheus), ``GET /healthz`` (the process answers), ``GET /readyz``
(Redis answers, the partitions were caught up once and every source lineage can be told;
while the worker starts, which step it waits for; with the source lineages' details),
``GET /mode`` and ``PUT /mode`` (body ``auto``, ``cdc`` or ``ttl``; needs
``Authorization: Bearer <admin_token>``), and the dead-letter page and API under
``/dlq`` (:mod:`cdc_cache.app.dlq_page`). The server (:mod:`cdc_cache.app.admin`) reads a
route's body only once its checks passed, and only up to the route's limit.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cdc_cache.mode.controller import Flag

log = logging.getLogger("cdc_cache.admin")

MAX_FLAG_BODY: Final = 64
_NO_TOKEN: Final = (
    "changing the mode over HTTP is disabled: set admin_token (CDC_CACHE_ADMIN_TOKEN) "
    "on the worker, or use `cdc-cache mode set`"
)


@dataclass
class Response:
    """One HTTP answer."""

    status: HTTPStatus
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """The parts of an HTTP request the routes look at (header names in lower case)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


def json_response(
    status: HTTPStatus, doc: object, headers: dict[str, str] | None = None
) -> Response:
    """``doc`` as a JSON answer."""
    return Response(status, orjson.dumps(doc), "application/json", headers or {})


def not_found(target: str) -> Response:
    """The answer to a path no route serves."""
    return json_response(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {target}"})


Page = Callable[[], tuple[HTTPStatus, bytes, str]]
"""Another process's own GET page: status, body and content type."""


@dataclass(frozen=True)
class Route:
    """What answers one (method, path): ``check`` first, then the body, then ``answer``.

    ``check`` answers instead (a refusal) before any body is read; ``body_limit`` is the
    largest body read (None: the body is not read).
    """

    answer: Callable[[Request], Response]
    body_limit: int | None = None
    check: Callable[[Request], Response | None] | None = None


class Routes:
    """The route table: exact (method, path) entries, and path prefixes for any method."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Route] = {}
        self._prefixes: list[tuple[str, Route]] = []

    def add(self, method: str, path: str, route: Route) -> Routes:
        """Serve ``method`` on exactly ``path`` (its query included)."""
        self._exact[(method, path)] = route
        return self

    def under(self, prefix: str, route: Route) -> Routes:
        """Serve every method on ``prefix`` and the paths below it (the query aside)."""
        self._prefixes.append((prefix, route))
        return self

    def find(self, method: str, target: str) -> Route | None:
        """The route for a request line's method and target (path and query)."""
        path = target.partition("?")[0]
        for prefix, route in self._prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return route
        return self._exact.get((method, target))


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


def mode_routes(
    backend: ModeBackend,
    token: str | None,
    details: Callable[[], dict[str, object]] | None = None,
) -> Routes:
    """Metrics, health, readiness and the mode; changing it needs ``token``."""
    expected = f"Bearer {token}".encode() if token else None

    def metrics(request: Request) -> Response:
        return Response(HTTPStatus.OK, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)

    def health(request: Request) -> Response:
        return json_response(HTTPStatus.OK, {"status": "ok"})

    def readiness(request: Request) -> Response:
        ready, checks = backend.ready()
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        extra = details() if details is not None else {}
        return json_response(status, {"ready": ready, "checks": checks, **extra})

    def view(request: Request) -> Response:
        return json_response(HTTPStatus.OK, backend.view())

    def authorized(request: Request) -> Response | None:
        if expected is None:
            return json_response(HTTPStatus.FORBIDDEN, {"error": _NO_TOKEN})
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return json_response(
                HTTPStatus.UNAUTHORIZED,
                {"error": "send the worker's admin_token as 'Authorization: Bearer <token>'"},
                {"WWW-Authenticate": "Bearer"},
            )
        return None

    def set_mode(request: Request) -> Response:
        body = request.body.decode(errors="replace").strip().lower()
        try:
            flag = Flag(body)
        except ValueError:
            return json_response(
                HTTPStatus.BAD_REQUEST, {"error": f"body must be auto, cdc or ttl, not {body!r}"}
            )
        try:
            backend.set_flag(flag)
        except Starting as exc:
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        log.warning("mode flag set over HTTP", extra={"flag": flag.value})
        return json_response(HTTPStatus.OK, {**backend.view(), "flag": flag.value})

    return (
        Routes()
        .add("GET", "/metrics", Route(metrics))
        .add("GET", "/healthz", Route(health))
        .add("GET", "/readyz", Route(readiness))
        .add("GET", "/mode", Route(view))
        .add("PUT", "/mode", Route(set_mode, body_limit=MAX_FLAG_BODY, check=authorized))
    )
