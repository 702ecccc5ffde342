"""Fetch Avro schemas by id from a Confluent Schema Registry, cached, for a batch at a time.

The I/O edge of Avro decoding: :class:`SchemaResolver` collects the schema ids of a batch,
fetches the ones not cached (``GET /schemas/ids/{id}``, Confluent's documented REST API)
and hands :mod:`cdc_cache.source.avro` a plain mapping, so decoding itself stays pure.

* Schemas by id never change, so they are cached (bounded, least recently used first out).
* An unreachable registry, a timeout or a 5xx is transient: retried with backoff, logged
  and counted, never skipped.
* An id the registry does not know (404, error code 40403), or a schema that does not
  parse, is the message's fault: its messages become poison with that reason.
* Refused credentials (401/403) or a URL that is not a registry are settings to fix:
  :class:`~cdc_cache.core.errors.ConfigError`, naming ``schema_registry_url``.

Credentials go in the URL's user info (``https://user:password@registry:8081``) and are
sent as HTTP basic auth; the URL is only ever shown redacted.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

from cdc_cache.core.errors import ConfigError, TransientError
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.redact import redact_url
from cdc_cache.core.retry import Backoff, retry_forever, retry_reporter
from cdc_cache.source.avro import AvroParser, AvroSchema, header_id, parse_schema

log = logging.getLogger("cdc_cache.schema_registry")
_REPORT_RETRY = retry_reporter("schema_registry", "schema registry unavailable, retrying", log)

SCHEMA_NOT_FOUND: Final = 40403
_ACCEPT: Final = "application/vnd.schemaregistry.v1+json, application/json"
_AUTH_REFUSED: Final = (401, 403)
_SERVER_ERROR: Final = 500
_TOO_MANY: Final = 429

Resolved = AvroSchema | str
"""A parsed schema, or why its id cannot be used (the messages become poison)."""


class SchemaRegistryClient:
    """Reads schemas by id over HTTP; keeps up to ``max_cached`` of them."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, max_cached: int = 1000) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"schema_registry_url {redact_url(url)!r} is not an http(s):// URL"
            raise ConfigError(msg)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        self._base = urlunsplit(parts._replace(netloc=host, query="", fragment="")).rstrip("/")
        self._shown = redact_url(url)
        self._headers = {"Accept": _ACCEPT}
        if parts.username is not None:
            user_info = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(user_info.encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._timeout = timeout_s
        self._max = max_cached
        self._cache: OrderedDict[int, Resolved] = OrderedDict()
        self._lock = threading.Lock()  # shared by the worker threads of a process

    def schemas(self, ids: Iterable[int]) -> dict[int, Resolved]:
        """Each id's schema (or why not), fetching those not cached.

        Raises TransientError when the registry cannot answer now.
        """
        with self._lock:
            return {sid: self._schema(sid) for sid in ids}

    def _schema(self, sid: int) -> Resolved:
        cached = self._cache.get(sid)
        if cached is None:
            cached, final = self._fetch(sid)
            if final:
                self._remember(sid, cached)
        else:
            self._cache.move_to_end(sid)
        return cached

    def _remember(self, sid: int, resolved: Resolved) -> None:
        self._cache[sid] = resolved
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    def _fetch(self, sid: int) -> tuple[Resolved, bool]:
        """The schema or why not, and whether that answer is final.

        Ids never change; an unknown id is not cached, as a restored registry may know it.
        """
        status, body = self._get(f"/schemas/ids/{sid}")
        if status == 200 and isinstance(body, dict) and isinstance(body.get("schema"), str):
            kind = body.get("schemaType", "AVRO")
            if kind != "AVRO":
                return f"schema id {sid} is a {kind} schema, not Avro", True
            try:
                return parse_schema(sid, body["schema"]), True
            except ValueError as exc:
                return str(exc), True
        code = body.get("error_code") if isinstance(body, dict) else None
        if status == 404 and code == SCHEMA_NOT_FOUND:
            return f"schema id {sid} is not in the schema registry at {self._shown}", False
        if status in _AUTH_REFUSED:
            msg = (
                f"the schema registry at {self._shown} refused access ({status}): put the "
                "right user:password into schema_registry_url"
            )
            raise ConfigError(msg)
        if status >= _SERVER_ERROR or status == _TOO_MANY:
            msg = f"schema registry at {self._shown} answered {status} for schema id {sid}"
            raise TransientError(msg)
        msg = (
            f"{self._shown} answered {status} to GET /schemas/ids/{sid}: is it a Confluent "
            "Schema Registry? check schema_registry_url"
        )
        raise ConfigError(msg)

    def _get(self, path: str) -> tuple[int, Any]:
        request = urllib.request.Request(self._base + path, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _json(exc.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            msg = f"schema registry at {self._shown} unreachable: {reason}"
            raise TransientError(msg) from None


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class SchemaResolver:
    """Builds the Avro parser for a batch: fetches the batch's schemas, waiting out outages.

    ``sleep`` may raise to end a wait (a stop request).
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._backoff = backoff or Backoff()
        self._sleep = sleep

    def parser_for(self, records: Iterable[SourceRecord]) -> AvroParser:
        """An :class:`AvroParser` that knows every schema id the records' headers name."""
        ids = {
            sid
            for record in records
            for sid in (header_id(record.key), header_id(record.value))
            if sid is not None
        }
        if not ids:
            return AvroParser({})
        return AvroParser(
            retry_forever(
                lambda: self._client.schemas(sorted(ids)),
                backoff=self._backoff,
                on_retry=_REPORT_RETRY,
                sleep=self._sleep,
            )
        )


class RegistrySettings(Protocol):
    """What :func:`schema_resolver` reads of the worker's settings."""

    @property
    def message_format(self) -> str: ...

    @property
    def schema_registry_url(self) -> str | None: ...


def schema_resolver(
    settings: RegistrySettings, sleep: Callable[[float], None] = time.sleep
) -> SchemaResolver | None:
    """For ``message_format: avro``, the registry lookups that precede decoding a batch."""
    if settings.message_format != "avro" or settings.schema_registry_url is None:
        return None
    return SchemaResolver(SchemaRegistryClient(settings.schema_registry_url), Backoff(), sleep)
