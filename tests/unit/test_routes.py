"""The admin API's route table, without a socket: which route answers, and in what order."""

from __future__ import annotations

from http import HTTPStatus

import orjson

from cdc_cache.app.routes import Request, Response, Route, Routes, Starting, mode_routes
from cdc_cache.mode.controller import Flag


class Backend:
    def __init__(self, starting: bool = False) -> None:
        self.flags: list[Flag] = []
        self.starting = starting

    def view(self) -> dict[str, object]:
        return {"mode": "cdc"}

    def ready(self) -> tuple[bool, dict[str, bool]]:
        return False, {"redis": False}

    def set_flag(self, flag: Flag) -> None:
        if self.starting:
            raise Starting("waiting for topics")
        self.flags.append(flag)


def request(method: str, path: str, body: bytes = b"", **headers: str) -> Request:
    return Request(method, path, "", {k.lower(): v for k, v in headers.items()}, body)


def answer(routes: Routes, req: Request) -> Response:
    route = routes.find(req.method, req.path)
    assert route is not None
    return (route.check(req) if route.check else None) or route.answer(req)


def test_exact_routes_match_the_whole_target_and_prefixes_the_path_below_them() -> None:
    dlq = Route(lambda r: Response(HTTPStatus.OK, b"dlq"))
    routes = mode_routes(Backend(), "t").under("/dlq", dlq)
    assert routes.find("GET", "/metrics") is not None
    assert routes.find("GET", "/metrics?x=1") is None
    assert routes.find("POST", "/mode") is None
    assert all(routes.find(m, p) is dlq for m in ("GET", "POST") for p in ("/dlq", "/dlq/api?a=b"))
    assert routes.find("GET", "/dlqx") is None


def test_setting_the_mode_is_refused_before_its_body_is_read() -> None:
    backend = Backend()
    route = mode_routes(backend, "s3cret").find("PUT", "/mode")
    assert route is not None and route.body_limit == 64 and route.check is not None
    refused = route.check(request("PUT", "/mode", authorization="Bearer wrong"))
    assert refused is not None and refused.status == HTTPStatus.UNAUTHORIZED
    assert route.check(request("PUT", "/mode", authorization="Bearer s3cret")) is None
    none = mode_routes(backend, None).find("PUT", "/mode")
    assert none is not None and none.check is not None
    assert none.check(request("PUT", "/mode")).status == HTTPStatus.FORBIDDEN  # type: ignore[union-attr]
    assert backend.flags == []


def test_a_valid_flag_is_set_and_a_starting_worker_says_so() -> None:
    backend = Backend()
    ok = answer(
        mode_routes(backend, "t"), request("PUT", "/mode", b" TTL\n", authorization="Bearer t")
    )
    assert ok.status == HTTPStatus.OK and orjson.loads(ok.body)["flag"] == "ttl"
    assert backend.flags == [Flag.TTL]
    starting = mode_routes(Backend(starting=True), "t")
    busy = answer(starting, request("PUT", "/mode", b"cdc", authorization="Bearer t"))
    assert busy.status == HTTPStatus.SERVICE_UNAVAILABLE
    bad = answer(starting, request("PUT", "/mode", b"sometimes", authorization="Bearer t"))
    assert bad.status == HTTPStatus.BAD_REQUEST


def test_readiness_answers_503_with_its_checks_until_ready() -> None:
    response = answer(mode_routes(Backend(), None), request("GET", "/readyz"))
    assert response.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert orjson.loads(response.body) == {"ready": False, "checks": {"redis": False}}
