"""A small in-memory Schema Registry for tests and the fixture recorder.

It speaks the subset of Confluent Schema Registry's REST API that Kafka Connect's
``AvroConverter`` and :mod:`cdc_cache.source.schema_registry` use; no Schema Registry package
installs on the local stack. Only these documented endpoints (AVRO schemas only, no
compatibility checks, deletes, references or modes):

* ``POST /subjects/{subject}/versions`` ``{"schema": "..."}`` → ``{"id": N}``: register,
  idempotent (the same schema gets the same id in every subject, as Confluent's does);
* ``POST /subjects/{subject}`` → ``{"subject", "version", "id", "schema"}``: look up;
* ``GET /schemas/ids/{id}`` → ``{"schema": "..."}``;
* ``GET /subjects`` and ``GET /subjects/{subject}/versions``.

Errors are Confluent's JSON bodies: 40401 subject not found, 40403 schema not found,
42201 invalid schema; as in Confluent's (a JAX-RS service), an id that is no Java int is a
path that is not served (404, error code 404). Query parameters (``normalize``,
``fetchMaxId``, ...) are ignored. With ``credentials`` set, every request needs that HTTP
basic auth, with ``token`` that bearer token (401 otherwise). With ``tls`` (a server-side
context, which may require client certificates) it serves HTTPS.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_JAVA_INT_MAX = 2**31 - 1


class SchemaRegistryServer:
    """The registry on ``127.0.0.1:port`` in a background thread; ``schemas`` by id."""

    def __init__(
        self,
        port: int,
        credentials: tuple[str, str] | None = None,
        *,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.credentials = credentials
        self.token = token
        self.tls = tls
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def address(self) -> str:
        """The URL clients are given."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def load(self, schemas: Mapping[int, str]) -> None:
        """Pre-register schemas under fixed ids (recorded fixtures)."""
        with self._lock:
            self.schemas.update(schemas)

    def start(self) -> SchemaRegistryServer:
        """Serve until :meth:`stop`."""
        registry = self

        class Handler(_Handler):
            owner = registry

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            # The handshake happens in the request's thread, on its first read.
            self._server.socket = self.tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        threading.Thread(
            target=self._server.serve_forever, name="schema-registry", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def register(self, subject: str, schema: str) -> int:
        """The id of ``schema`` (new or existing), recorded as a version of ``subject``."""
        canonical = orjson.loads(schema)
        with self._lock:
            sid = next(
                (i for i, text in self.schemas.items() if orjson.loads(text) == canonical),
                None,
            )
            if sid is None:
                sid = max(self.schemas, default=0) + 1
                self.schemas[sid] = schema
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return sid

    def lookup(self, subject: str, schema: str) -> tuple[int, int] | None:
        """``(id, version)`` of ``schema`` under ``subject``, None when it is not there."""
        canonical = orjson.loads(schema)
        with self._lock:
            for version, sid in enumerate(self.subjects.get(subject, []), start=1):
                if orjson.loads(self.schemas[sid]) == canonical:
                    return sid, version
        return None


class _Server(ThreadingHTTPServer):
    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client: object
    ) -> None:
        """Quiet: a refused TLS handshake is what the TLS tests provoke."""


class _Handler(BaseHTTPRequestHandler):
    owner: SchemaRegistryServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are kept in ``owner.requests`` instead."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        path = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        self.owner.requests.append(f"{method} {'/'.join(path)}")
        if not self._authorised():
            self._send(HTTPStatus.UNAUTHORIZED, _error(40101, "Unauthorized"))
            return
        body = self._body() if method == "POST" else None
        try:
            status, reply = self._route(method, path, body)
        except (orjson.JSONDecodeError, TypeError, KeyError):
            status, reply = HTTPStatus.UNPROCESSABLE_ENTITY, _error(42201, "Invalid schema")
        self._send(status, reply)

    def _route(self, method: str, path: list[str], body: Any) -> tuple[HTTPStatus, Any]:
        owner = self.owner
        match method, path:
            case "GET", ["schemas", "ids", sid] if sid.isdigit() and int(sid) <= _JAVA_INT_MAX:
                schema = owner.schemas.get(int(sid))
                if schema is None:
                    return HTTPStatus.NOT_FOUND, _error(40403, "Schema not found")
                return HTTPStatus.OK, {"schema": schema}
            case "GET", ["subjects"]:
                return HTTPStatus.OK, sorted(owner.subjects)
            case "GET", ["subjects", subject, "versions"]:
                if subject not in owner.subjects:
                    return HTTPStatus.NOT_FOUND, _error(40401, "Subject not found")
                return HTTPStatus.OK, list(range(1, len(owner.subjects[subject]) + 1))
            case "POST", ["subjects", subject, "versions"]:
                if body.get("schemaType", "AVRO") != "AVRO":
                    return HTTPStatus.UNPROCESSABLE_ENTITY, _error(42201, "Only AVRO here")
                return HTTPStatus.OK, {"id": owner.register(subject, body["schema"])}
            case "POST", ["subjects", subject]:
                found = owner.lookup(subject, body["schema"])
                if found is None:
                    code = 40403 if subject in owner.subjects else 40401
                    return HTTPStatus.NOT_FOUND, _error(code, "Not found")
                found_id, version = found
                reply = {"subject": subject, "version": version, "id": found_id}
                return HTTPStatus.OK, reply | {"schema": owner.schemas[found_id]}
        return HTTPStatus.NOT_FOUND, _error(404, f"{method} /{'/'.join(path)} is not served")

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization")
        if self.owner.token is not None:
            return given == f"Bearer {self.owner.token}"
        if self.owner.credentials is None:
            return True
        user, password = self.owner.credentials
        expected = base64.b64encode(f"{user}:{password}".encode()).decode()
        return given == f"Basic {expected}"

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return orjson.loads(self.rfile.read(length)) if length else {}

    def _send(self, status: HTTPStatus, reply: Any) -> None:
        data = orjson.dumps(reply)
        self.send_response(status)
        self.send_header("Content-Type", _CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error_code": code, "message": message}
