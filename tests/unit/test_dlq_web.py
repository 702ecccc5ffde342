"""The DLQ page and API on the admin server: nothing without the token, actions POST-only."""

from __future__ import annotations

import http.client
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest

from cdc_cache.app.admin import AdminServer
from cdc_cache.app.dlq_page import COOKIE, SESSION_TTL_S, Sessions
from cdc_cache.app.replay import ReplayOutcome
from cdc_cache.dlq.entries import iso_utc
from cdc_cache.dlq.filters import EntryFilter
from tests.unit.test_admin import FakeRuntime

TOKEN = "s3cret-token"
ENTRY = {
    "id": "e1",
    "kind": "redis_refused",
    "failed_at": iso_utc(1_790_000_000_000),
    "table": "inventory.stock",
    "reason": "<script>alert(1)</script>",
    "source": {"topic": "t", "partition": 0, "offset": 3},
    "position": "binlog:0/1:4#0",
    "stack": "Traceback ...",
    "message": {"key": None, "value": None, "redacted": []},
    "outcome": None,
}


class FakeDlq:
    def __init__(self) -> None:
        self.filters: list[EntryFilter | None] = []
        self.replayed: list[list[str]] = []

    def entries(self, where: EntryFilter | None = None) -> list[dict[str, Any]]:
        self.filters.append(where)
        return [dict(ENTRY)] if where is None or where.matches(ENTRY) else []

    def replay(self, entries: Sequence[dict[str, Any]]) -> list[ReplayOutcome]:
        self.replayed.append([e["id"] for e in entries])
        return [ReplayOutcome(e["id"], "applied", "position x", "now") for e in entries]


@pytest.fixture(scope="module")
def shared_dlq() -> FakeDlq:
    return FakeDlq()


@pytest.fixture
def dlq(shared_dlq: FakeDlq) -> FakeDlq:
    shared_dlq.filters.clear()
    shared_dlq.replayed.clear()
    return shared_dlq


def serve(dlq: FakeDlq, token: str | None) -> Iterator[AdminServer]:
    server = AdminServer(FakeRuntime(), 0, token, host="127.0.0.1", dlq=dlq).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def server(shared_dlq: FakeDlq) -> Iterator[AdminServer]:
    """One server for the module (starting one per test costs half a second)."""
    yield from serve(shared_dlq, TOKEN)


def call(
    server: AdminServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    return response


def body_of(server: AdminServer, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path, body=kwargs.get("body"), headers=kwargs.get("headers") or {})
    response = conn.getresponse()
    return response.status, response.read()


BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
EVERY_ENDPOINT = [
    ("GET", "/dlq"),
    ("GET", "/dlq/"),
    ("GET", "/dlq/app.js"),
    ("GET", "/dlq/style.css"),
    ("GET", "/dlq/api/entries"),
    ("GET", "/dlq/api/entries/e1"),
    ("POST", "/dlq/api/replay"),
    ("POST", "/dlq/logout"),
    ("PUT", "/dlq/api/replay"),
]
WRONG_CREDENTIALS = [
    {},
    {"Authorization": "Bearer nope"},
    {"Authorization": TOKEN},
    {"Cookie": f"{COOKIE}={TOKEN}"},
    {"Cookie": f"{COOKIE}={Sessions('other').issue()}"},
    {"Cookie": f"{COOKIE}={Sessions(TOKEN).issue()}"},  # another process's (or run's) session
]


@pytest.mark.parametrize(("method", "path"), EVERY_ENDPOINT)
@pytest.mark.parametrize("headers", WRONG_CREDENTIALS)
def test_nothing_without_the_token_is_401(server, dlq, method, path, headers):
    body = b'{"all": true}' if method != "GET" else None
    status, content = body_of(server, method, path, body=body, headers={**JSON, **headers})
    assert status == 401
    assert b"inventory.stock" not in content
    assert dlq.filters == [] and dlq.replayed == []


def test_the_sign_in_form_is_all_an_unauthenticated_browser_gets(server):
    status, content = body_of(server, "GET", "/dlq")
    assert status == 401
    assert b'<form method="post" action="/dlq/login">' in content
    assert b"dlq.js" not in content and b"app.js" not in content


def test_sign_in_sets_a_strict_httponly_cookie_that_is_not_the_token(server, dlq):
    wrong = call(server, "POST", "/dlq/login", b"token=nope", {"Content-Type": "x"})
    assert wrong.status == 401 and wrong.getheader("Set-Cookie") is None

    right = call(server, "POST", "/dlq/login", f"token={TOKEN}".encode())
    assert right.status == 303 and right.getheader("Location") == "/dlq"
    cookie = right.getheader("Set-Cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert f"Max-Age={SESSION_TTL_S}" in cookie
    assert TOKEN not in cookie
    value = cookie.split(";")[0]

    status, page = body_of(server, "GET", "/dlq", headers={"Cookie": value})
    assert status == 200 and b'src="/dlq/app.js"' in page
    status, listing = body_of(server, "GET", "/dlq/api/entries", headers={"Cookie": value})
    assert status == 200 and orjson.loads(listing)["entries"][0]["id"] == "e1"


def test_listing_passes_filters_and_leaves_out_message_and_stack(server, dlq):
    query = "table=inventory.stock&kind=redis_refused&since=2026-01-01T00:00:00Z&until="
    status, content = body_of(server, "GET", f"/dlq/api/entries?{query}", headers=BEARER)
    assert status == 200
    (shown,) = orjson.loads(content)["entries"]
    assert "stack" not in shown and "message" not in shown
    assert shown["reason"] == ENTRY["reason"]  # JSON as is; the page sets textContent
    assert dlq.filters[-1] == EntryFilter(
        table="inventory.stock", kind="redis_refused", since_ms=1767225600000
    )


def test_detail_has_the_stack_and_message(server):
    status, content = body_of(server, "GET", "/dlq/api/entries/e1", headers=BEARER)
    assert status == 200 and orjson.loads(content)["stack"] == "Traceback ..."
    status, _ = body_of(server, "GET", "/dlq/api/entries/nope", headers=BEARER)
    assert status == 404


def test_a_bad_time_filter_is_400_with_an_example(server):
    status, content = body_of(server, "GET", "/dlq/api/entries?since=yesterday", headers=BEARER)
    assert status == 400 and b"2026-01-31T12:00:00Z" in content


@pytest.mark.parametrize(
    ("body", "expected"),
    [({"ids": ["e1"]}, [["e1"]]), ({"all": True}, [["e1"]]), ({"filter": {"kind": "x"}}, [[]])],
)
def test_replay_by_ids_filter_or_all(server, dlq, body, expected):
    status, content = body_of(
        server, "POST", "/dlq/api/replay", body=orjson.dumps(body), headers={**BEARER, **JSON}
    )
    assert status == 200
    assert dlq.replayed == expected
    assert [o["outcome"] for o in orjson.loads(content)["outcomes"]] == ["applied"] * len(
        expected[0]
    )


def test_replay_needs_post_with_json(server, dlq):
    assert body_of(server, "GET", "/dlq/api/replay", headers=BEARER)[0] == 405
    form = {**BEARER, "Content-Type": "application/x-www-form-urlencoded"}
    assert body_of(server, "POST", "/dlq/api/replay", body=b"all=true", headers=form)[0] == 415
    assert (
        body_of(server, "POST", "/dlq/api/replay", body=b"{}", headers={**BEARER, **JSON})[0] == 400
    )
    assert dlq.replayed == []


def test_pages_carry_a_strict_content_security_policy(server):
    response = call(server, "GET", "/dlq", headers=BEARER)
    policy = response.getheader("Content-Security-Policy") or ""
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.getheader("X-Frame-Options") == "DENY"


def test_without_a_configured_token_the_page_is_403(dlq):
    for server in serve(dlq, None):
        assert body_of(server, "GET", "/dlq")[0] == 403
        status, _ = body_of(
            server, "POST", "/dlq/api/replay", body=b'{"all": true}', headers={**BEARER, **JSON}
        )
        assert status == 403
    assert dlq.replayed == []


def signed_in(server: AdminServer) -> dict[str, str]:
    response = call(server, "POST", "/dlq/login", f"token={TOKEN}".encode())
    return {"Cookie": (response.getheader("Set-Cookie") or "").split(";")[0]}


def test_signing_out_revokes_the_session_not_only_the_cookie(server):
    cookie, other = signed_in(server), signed_in(server)
    assert call(server, "GET", "/dlq/api/entries", headers=cookie).status == 200

    out = call(server, "POST", "/dlq/logout", headers=cookie)
    assert out.status == 303 and "Max-Age=0" in (out.getheader("Set-Cookie") or "")

    assert call(server, "GET", "/dlq/api/entries", headers=cookie).status == 401  # replayed
    assert call(server, "GET", "/dlq/api/entries", headers=other).status == 200


def test_a_session_expires():
    now = [1_000_000.0]
    sessions = Sessions(TOKEN, ttl_s=60, clock=lambda: now[0])
    value = sessions.issue()
    assert sessions.valid(value)
    now[0] += 59
    assert sessions.valid(value)
    now[0] += 1
    assert not sessions.valid(value)


@pytest.mark.parametrize(
    "forge",
    [
        lambda v: v.replace(v.split(".")[1], str(int(v.split(".")[1]) + 3600)),  # extended
        lambda v: "x" + v,
        lambda v: v.rsplit(".", 1)[0],
        lambda v: v.split(".")[0] + ".²." + v.split(".")[2],
        lambda v: "",
    ],
)
def test_a_forged_session_is_refused(forge):
    sessions = Sessions(TOKEN)
    assert not sessions.valid(forge(sessions.issue()))
