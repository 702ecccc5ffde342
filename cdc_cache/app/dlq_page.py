"""The DLQ web page and its JSON API, served by the worker's admin server under ``/dlq``.

Nothing is shown and nothing runs without the worker's ``admin_token``: a browser signs
in with a form that sets an HttpOnly, SameSite=Strict cookie holding a session (never the
token itself); scripts send ``Authorization: Bearer <token>``. A session is signed with a
key made at start from the token and fresh randomness, and expires after
``SESSION_TTL_S``; signing out revokes it, and a restart (or a new token) revokes them all.
Every comparison is constant-time. Actions are POSTs with a JSON body, which a form on
another site cannot send, and the cookie is never sent cross-site. The page renders
entries with ``textContent`` only, so a payload cannot inject markup.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import cache
from http import HTTPStatus
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote

import orjson

from cdc_cache.app.replay import ReplayOutcome
from cdc_cache.app.routes import Request, Response, json_response
from cdc_cache.core.errors import CdcCacheError
from cdc_cache.dlq.filters import EntryFilter, entry_filter, summary

log = logging.getLogger("cdc_cache.dlq_web")

COOKIE: Final = "cdc_dlq"
MAX_BODY: Final = 64 * 1024
SESSION_TTL_S: Final = 8 * 3600
_NO_TOKEN: Final = (
    "the DLQ page is disabled: set admin_token (CDC_CACHE_ADMIN_TOKEN) on the worker, "
    "or use `cdc-cache dlq`"
)
_SECURITY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
_STATIC: Final = {
    "/dlq": ("dlq.html", "text/html; charset=utf-8"),
    "/dlq/app.js": ("dlq.js", "text/javascript; charset=utf-8"),
    "/dlq/style.css": ("dlq.css", "text/css; charset=utf-8"),
}


class DlqBackend(Protocol):
    """What the page needs: listing with filters and replaying (see replay.DlqService)."""

    def entries(self, where: EntryFilter | None = None) -> list[dict[str, Any]]: ...

    def replay(self, entries: Sequence[dict[str, Any]]) -> Sequence[ReplayOutcome]: ...


@cache
def _asset(name: str) -> bytes:
    return importlib.resources.files("cdc_cache").joinpath("app/web", name).read_bytes()


class Sessions:
    """Sign-in sessions: ``<id>.<expires>.<signature>``, valid until expiry or revocation.

    The signing key is derived from the token and 32 random bytes drawn at start, so a
    cookie does not reveal the token, is worthless to another process, and dies with a
    restart or a new token. Revoked ids are kept until they would have expired anyway.
    """

    def __init__(
        self, token: str, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = hmac.new(token.encode(), secrets.token_bytes(32), hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: dict[str, float] = {}

    def issue(self) -> str:
        """A new session's cookie value."""
        unsigned = f"{secrets.token_hex(16)}.{int(self._clock() + self.ttl_s)}"
        return f"{unsigned}.{self._sign(unsigned)}"

    def valid(self, value: str) -> bool:
        """True for a session this process issued that has neither expired nor been revoked."""
        return self._open(value) is not None

    def revoke(self, value: str) -> None:
        """End the session ``value`` (a cookie that is not a live session is ignored)."""
        opened = self._open(value)
        if opened is None:
            return
        now = self._clock()
        with self._lock:
            self._revoked = {sid: until for sid, until in self._revoked.items() if until > now}
            self._revoked[opened[0]] = opened[1]

    def _open(self, value: str) -> tuple[str, float] | None:
        sid, _, rest = value.partition(".")
        expires, _, signature = rest.partition(".")
        # The signature is always compared, so timing does not tell a malformed value apart.
        signed = hmac.compare_digest(signature.encode(), self._sign(f"{sid}.{expires}").encode())
        fresh = expires.isascii() and expires.isdigit() and float(expires) > self._clock()
        if not signed or not fresh:
            return None
        with self._lock:
            if sid in self._revoked:
                return None
        return sid, float(expires)

    def _sign(self, unsigned: str) -> str:
        return hmac.new(self._key, unsigned.encode(), hashlib.sha256).hexdigest()


def _session_of(request: Request) -> str:
    return _cookies(request.headers.get("cookie", "")).get(COOKIE, "")


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


class DlqPages:
    """Routes ``/dlq`` requests; ``token`` None disables the page (403 everywhere)."""

    def __init__(
        self, backend: DlqBackend, token: str | None, sessions: Sessions | None = None
    ) -> None:
        self._backend = backend
        self._token = token
        self._bearer = f"Bearer {token}".encode() if token else None
        self.sessions = sessions or (Sessions(token) if token else None)

    def handle(self, request: Request) -> Response:
        """Answer ``request`` (any path under ``/dlq``) with security headers set."""
        response = self._route(request)
        response.headers = {**_SECURITY_HEADERS, **response.headers}
        return response

    def _authorized(self, request: Request) -> bool:
        assert self._bearer is not None and self.sessions is not None
        given = request.headers.get("authorization", "").encode()
        # Both checks always run: timing says nothing about which one failed.
        by_bearer = hmac.compare_digest(given, self._bearer)
        by_cookie = self.sessions.valid(_session_of(request))
        return by_bearer or by_cookie

    def _route(self, request: Request) -> Response:
        if self._token is None:
            return json_response(HTTPStatus.FORBIDDEN, {"error": _NO_TOKEN})
        path, method = request.path.rstrip("/") or "/", request.method
        if path == "/dlq/login" and method == "POST":
            return self._login(request)
        if not self._authorized(request):
            return self._unauthorized(request)
        if path in _STATIC and method == "GET":
            name, content_type = _STATIC[path]
            return Response(HTTPStatus.OK, _asset(name), content_type)
        if path == "/dlq/logout" and method == "POST":
            assert self.sessions is not None
            self.sessions.revoke(_session_of(request))
            return Response(
                HTTPStatus.SEE_OTHER,
                b"",
                "text/plain",
                {"Location": "/dlq", "Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/dlq; HttpOnly"},
            )
        try:
            if path == "/dlq/api/entries" and method == "GET":
                listed = self._backend.entries(_filter(parse_qs(request.query)))
                return json_response(HTTPStatus.OK, {"entries": [summary(e) for e in listed]})
            if path.startswith("/dlq/api/entries/") and method == "GET":
                entry_id = unquote(path.removeprefix("/dlq/api/entries/"))
                found = self._backend.entries(EntryFilter(ids=frozenset({entry_id})))
                if not found:
                    return json_response(
                        HTTPStatus.NOT_FOUND, {"error": f"no DLQ entry {entry_id!r}"}
                    )
                return json_response(HTTPStatus.OK, found[0])
            if path == "/dlq/api/replay" and method == "POST":
                return self._replay(request)
        except ValueError as exc:
            return json_response(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except CdcCacheError as exc:
            log.warning("DLQ request failed", extra={"path": path, "error": str(exc)})
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        if path in _STATIC or path.startswith("/dlq/api/"):
            return json_response(
                HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{method} not allowed here"}
            )
        return json_response(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})

    def _unauthorized(self, request: Request) -> Response:
        if request.method == "GET" and request.path.rstrip("/") == "/dlq":
            return Response(
                HTTPStatus.UNAUTHORIZED, _asset("login.html"), "text/html; charset=utf-8"
            )
        return json_response(
            HTTPStatus.UNAUTHORIZED,
            {"error": "sign in at /dlq, or send 'Authorization: Bearer <admin_token>'"},
            {"WWW-Authenticate": "Bearer"},
        )

    def _login(self, request: Request) -> Response:
        assert self._token is not None and self.sessions is not None
        form = parse_qs(request.body.decode(errors="replace"))
        given = (form.get("token") or [""])[0].encode()
        if not hmac.compare_digest(given, self._token.encode()):
            log.warning("DLQ page sign-in with a wrong token")
            return Response(
                HTTPStatus.UNAUTHORIZED, _asset("login.html"), "text/html; charset=utf-8"
            )
        cookie = (
            f"{COOKIE}={self.sessions.issue()}; Max-Age={int(self.sessions.ttl_s)}; "
            "Path=/dlq; HttpOnly; SameSite=Strict"
        )
        return Response(
            HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/dlq", "Set-Cookie": cookie}
        )

    def _replay(self, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return json_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send a JSON body"})
        try:
            body = orjson.loads(request.body or b"{}")
        except orjson.JSONDecodeError as exc:
            msg = f"the body is not JSON: {exc}"
            raise ValueError(msg) from exc
        if not isinstance(body, dict):
            msg = 'send {"ids": [...]}, {"filter": {...}} or {"all": true}'
            raise ValueError(msg)
        if isinstance(body.get("ids"), list) and body["ids"]:
            where = EntryFilter(ids=frozenset(str(i) for i in body["ids"]))
        elif isinstance(body.get("filter"), dict):
            where = _filter({k: [str(v)] for k, v in body["filter"].items() if v})
        elif body.get("all") is True:
            where = EntryFilter()
        else:
            msg = 'send {"ids": [...]}, {"filter": {...}} or {"all": true}'
            raise ValueError(msg)
        entries = self._backend.entries(where)
        outcomes = self._backend.replay(entries)
        log.warning("DLQ entries replayed over HTTP", extra={"count": len(entries)})
        return json_response(HTTPStatus.OK, {"outcomes": [asdict(o) for o in outcomes]})


def _filter(query: dict[str, list[str]]) -> EntryFilter:
    """An EntryFilter from the ``table``, ``kind``, ``since`` and ``until`` parameters."""
    first = {name: values[0] for name, values in query.items() if values}
    return entry_filter(*(first.get(name) for name in ("table", "kind", "since", "until")))
