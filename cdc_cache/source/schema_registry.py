"""Fetch Avro schemas by id from a Confluent Schema Registry, cached, for a batch at a time.

The I/O edge of Avro decoding: :class:`SchemaResolver` collects the schema ids of a batch,
fetches the ones not cached through confluent-kafka's own ``SchemaRegistryClient`` (TLS with
a custom CA, mTLS, basic auth and bearer tokens: :mod:`cdc_cache.source.registry_access`)
and hands :mod:`cdc_cache.source.avro` a plain mapping, so decoding itself stays pure.

* Schemas by id never change, so they are cached parsed (bounded, least recently used
  first out); the library's own unbounded cache is emptied after each fetch.
* An unreachable registry, a timeout, a 5xx or a 429 is transient: retried with our
  backoff (the library's retries are off), logged and counted, never skipped.
* An id the registry does not know (404, error code 40403), or a schema that does not
  parse, is the message's fault: its messages become poison with that reason.
* Refused credentials (401/403), a certificate the CA does not vouch for, a client
  certificate the registry refuses, or a URL that is not a registry are settings to fix:
  :class:`~cdc_cache.core.errors.ConfigError`, naming the setting.

The URL is only ever shown redacted.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final, NoReturn, Protocol

import httpx2
from confluent_kafka.schema_registry import SchemaRegistryClient as ConfluentRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from cdc_cache.core.errors import ConfigError, TransientError, chain
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.redact import redact_url
from cdc_cache.core.retry import Backoff, retry_forever, retry_reporter
from cdc_cache.source.avro import AvroParser, AvroSchema, header_id, parse_schema
from cdc_cache.source.registry_access import (
    BasicAuth,
    BearerAuth,
    RegistryAccess,
    RegistryTLS,
    client_conf,
)

log = logging.getLogger("cdc_cache.schema_registry")
_REPORT_RETRY = retry_reporter("schema_registry", "schema registry unavailable, retrying", log)

SCHEMA_NOT_FOUND: Final = 40403
_AUTH_REFUSED: Final = (401, 403)
_SERVER_ERROR: Final = 500
_TOO_MANY: Final = 429
# The registry's TLS alerts about our certificate: missing, unknown or refused.
_CLIENT_CERT_ALERTS: Final = ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE")

Resolved = AvroSchema | str
"""A parsed schema, or why its id cannot be used (the messages become poison)."""


class SchemaRegistryClient:
    """Reads schemas by id through confluent-kafka's client; keeps up to ``max_cached``."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        max_cached: int = 1000,
        tls: RegistryTLS | None = None,
        auth: BasicAuth | BearerAuth | None = None,
    ) -> None:
        access = RegistryAccess(url, tls or RegistryTLS(), auth, timeout_s)
        conf = client_conf(access)  # raises ConfigError naming the setting
        self._shown = ",".join(redact_url(part) for part in str(conf["url"]).split(","))
        try:
            self._client = ConfluentRegistryClient(conf)
        except (ValueError, TypeError, OSError, ssl.SSLError) as exc:
            msg = f"schema registry settings for {self._shown}: {exc}"
            raise ConfigError(msg) from None
        self._max = max_cached
        self._cache: OrderedDict[int, Resolved] = OrderedDict()
        self._lock = threading.Lock()  # shared by the worker threads of a process

    def schemas(self, ids: Iterable[int]) -> dict[int, Resolved]:
        """Each id's schema (or why not), fetching those not cached.

        Raises TransientError when the registry cannot answer now.
        """
        with self._lock:
            return {sid: self._schema(sid) for sid in ids}

    def check(self) -> None:
        """Reach the registry once (``GET /subjects``), so a setting to fix stops the start.

        Raises ConfigError for refused credentials, TLS or a URL that is not a registry,
        TransientError while it cannot answer.
        """
        try:
            self._client.get_subjects()
        except SchemaRegistryError as exc:
            self._refused("GET /subjects", exc.http_status_code)
        except httpx2.TransportError as exc:
            raise self._unreachable(exc) from None

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.close()

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
        request = f"GET /schemas/ids/{sid}"
        try:
            schema = self._client.get_schema(sid)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and exc.error_code == SCHEMA_NOT_FOUND:
                return f"schema id {sid} is not in the schema registry at {self._shown}", False
            self._refused(request, exc.http_status_code)
        except httpx2.TransportError as exc:
            raise self._unreachable(exc) from None
        except (ValueError, TypeError, AttributeError, KeyError):
            self._refused(request, 200)  # a body that is not a schema
        finally:
            # ours is the cache, bounded and of parsed schemas (clear_caches is unannotated)
            self._client.clear_caches()  # type: ignore[no-untyped-call]
        if not isinstance(schema.schema_str, str):
            self._refused(request, 200)
        kind = schema.schema_type or "AVRO"
        if kind != "AVRO":
            return f"schema id {sid} is a {kind} schema, not Avro", True
        try:
            return parse_schema(sid, schema.schema_str), True
        except ValueError as exc:
            return str(exc), True

    def _refused(self, request: str, status: int) -> NoReturn:
        """Raise for an answer a setting (ConfigError) or a retry (TransientError) must fix."""
        if status in _AUTH_REFUSED:
            msg = (
                f"the schema registry at {self._shown} refused access ({status}): set the "
                "right credentials (schema_registry_user and schema_registry_password, "
                "user:password in schema_registry_url, or schema_registry_token)"
            )
            raise ConfigError(msg)
        if status >= _SERVER_ERROR or status == _TOO_MANY:
            msg = f"schema registry at {self._shown} answered {status} to {request}"
            raise TransientError(msg)
        msg = (
            f"{self._shown} answered {status} to {request}: is it a Confluent "
            "Schema Registry? check schema_registry_url"
        )
        raise ConfigError(msg)

    def _unreachable(self, exc: httpx2.TransportError) -> ConfigError | TransientError:
        """A TLS problem is a setting to fix; anything else on the way is an outage."""
        for cause in chain(exc):
            if isinstance(cause, ssl.SSLCertVerificationError):
                msg = (
                    f"the schema registry at {self._shown} presented a certificate that is "
                    f"not trusted ({cause.verify_message}): set schema_registry_ca_file to "
                    "the CA that signs it, and reach it by a name the certificate holds"
                )
                return ConfigError(msg)
            if isinstance(cause, ssl.SSLError) and any(
                alert in str(cause.reason or "") for alert in _CLIENT_CERT_ALERTS
            ):
                msg = (
                    f"the schema registry at {self._shown} refused the TLS handshake "
                    f"({cause.reason}): it wants a client certificate its CA signed; set "
                    "schema_registry_cert_file and schema_registry_key_file"
                )
                return ConfigError(msg)
        return TransientError(f"schema registry at {self._shown} unreachable: {exc}")


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

    def check(self) -> None:
        """Wait until the registry answers; raises ConfigError for what a setting must fix."""
        retry_forever(
            self._client.check, backoff=self._backoff, on_retry=_REPORT_RETRY, sleep=self._sleep
        )

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

    def schema_registry_access(self) -> RegistryAccess | None:
        """The registry's URL, TLS and credentials; None without schema_registry_url."""


def schema_resolver(
    settings: RegistrySettings, sleep: Callable[[float], None] = time.sleep
) -> SchemaResolver | None:
    """For ``message_format: avro``, the registry lookups that precede decoding a batch."""
    access = settings.schema_registry_access()
    if settings.message_format != "avro" or access is None:
        return None
    client = SchemaRegistryClient(
        access.url, timeout_s=access.timeout_s, tls=access.tls, auth=access.auth
    )
    return SchemaResolver(client, Backoff(), sleep)
