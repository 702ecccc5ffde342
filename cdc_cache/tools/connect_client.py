"""Kafka Connect's REST API: HTTP in :class:`UrllibTransport`, Connect's conventions above it.

:class:`ConnectClient` adds Kafka Connect's error conventions (409 while the group
rebalances: retry) and says what to fix when a request is refused.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cdc_cache.core.errors import CdcCacheError
from cdc_cache.core.retry import Backoff


class ConnectRestError(CdcCacheError):
    """Kafka Connect could not be reached, refused a request, or answered unexpectedly."""


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer: the status code and the JSON body (text if it was not JSON)."""

    status: int
    body: Any


class Transport(Protocol):
    """Sends one request to Kafka Connect's REST API; ``url`` names it in messages."""

    url: str

    def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send ``body`` as JSON; return any HTTP answer, raise only if none came."""


class UrllibTransport:
    """The standard library's HTTP client: no dependency for a handful of requests."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send ``body`` as JSON; HTTP errors are answers too, only a dead socket raises."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Accept": "application/json", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as answer:
                return Response(answer.status, _parse_body(answer.read()))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, _parse_body(exc.read()))
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            msg = (
                f"cannot reach {self.url} ({reason}): is Kafka Connect running at {self.url}? "
                "Check --url (or CDC_CACHE_CONNECT_URL)"
            )
            raise ConnectRestError(msg) from exc


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def connect_message(response: Response) -> str:
    """Kafka Connect's own explanation (its error body's ``message``), else the raw body."""
    body = response.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(body)[:500] if body is not None else "(empty body)"


def _is_connect_error_body(response: Response) -> bool:
    """Connect's errors carry ``error_code``; a 404 without it is not from Connect."""
    return isinstance(response.body, dict) and "error_code" in response.body


def _fix_for(status: int) -> str:
    if status == 400:
        return "fix the connector file"
    if status == 409:
        return "a rebalance or another config change is still under way; retry later"
    if status >= 500:
        return "see the Kafka Connect worker's log"
    return "check that --url points at Kafka Connect's REST API"


class ConnectClient:
    """The three calls cdc-cache needs, with Kafka Connect's 409 retried with backoff.

    Connect answers 409 while its worker group rebalances or another config change is in
    flight; both clear by themselves, so the request is repeated until
    ``conflict_timeout_s`` has passed. ``on_conflict`` hears about each retry.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        backoff: Backoff | None = None,
        conflict_timeout_s: float = 60.0,
        on_conflict: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = transport.url
        self._transport = transport
        self._backoff = backoff or Backoff(initial=0.5, maximum=5.0)
        self._conflict_timeout_s = conflict_timeout_s
        self._on_conflict = on_conflict
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random()

    def config(self, name: str) -> dict[str, str] | None:
        """The connector's stored config, or None if Connect has no such connector."""
        config = self._get_or_none(f"/connectors/{_quote(name)}/config")
        return None if config is None else {str(k): str(v) for k, v in config.items()}

    def status(self, name: str) -> dict[str, Any] | None:
        """The connector's status document, or None if Connect has no such connector."""
        return self._get_or_none(f"/connectors/{_quote(name)}/status")

    def put_config(self, name: str, config: Mapping[str, str]) -> int:
        """Create (201) or update (200) the connector; any other answer raises."""
        method, path = "PUT", f"/connectors/{_quote(name)}/config"
        response = self._request(method, path, dict(config))
        if response.status not in (200, 201):
            raise self._refused(method, path, response)
        return response.status

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        method = "GET"
        response = self._request(method, path)
        if response.status == 404 and _is_connect_error_body(response):
            return None
        body = response.body
        if response.status != 200 or not isinstance(body, dict):
            raise self._refused(method, path, response)
        return body

    def _request(self, method: str, path: str, body: Any = None) -> Response:
        deadline = self._clock() + self._conflict_timeout_s
        attempt = 0
        while True:
            response = self._transport.request(method, path, body)
            if response.status != 409:
                return response
            attempt += 1
            delay = self._backoff.delay(attempt, self._rng)
            if self._clock() + delay > deadline:
                raise self._refused(method, path, response)
            if self._on_conflict is not None:
                self._on_conflict(
                    f"{method} {self.url}{path}: 409 {connect_message(response)}; "
                    f"retrying in {delay:.1f} s"
                )
            self._sleep(delay)

    def _refused(self, method: str, path: str, response: Response) -> ConnectRestError:
        return ConnectRestError(
            f"{method} {self.url}{path} answered {response.status}: "
            f"{connect_message(response)}; {_fix_for(response.status)}"
        )


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")
