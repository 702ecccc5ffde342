"""How the worker reaches its Schema Registry: URL, TLS (custom CA, mTLS) and credentials.

The settings ``schema_registry_*`` become one :class:`RegistryAccess`, checked here before
anything connects, so a bad combination or an unreadable certificate stops startup naming
the setting to fix. :func:`client_conf` turns it into the configuration of confluent-kafka's
own ``SchemaRegistryClient`` (its properties ``ssl.*``, ``basic.auth.user.info``,
``bearer.auth.*``), with that client's retries off: the caller retries with its own backoff,
counted in ``cdc_cache_retries_total{target="schema_registry"}`` and stoppable.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.redact import redact_url


@dataclass(frozen=True)
class RegistryTLS:
    """Whom to trust (a CA bundle or folder) and, for mTLS, who we are."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = None

    def __bool__(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file, self.key_password))


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic auth (also taken from the URL's user info, never both)."""

    user: str
    password: str


@dataclass(frozen=True)
class BearerAuth:
    """A static bearer token; Confluent Cloud also needs its logical cluster (``lsrc-...``)."""

    token: str
    logical_cluster: str = ""


@dataclass(frozen=True)
class RegistryAccess:
    """Everything needed to open the registry client; see :func:`access_problems`."""

    url: str
    tls: RegistryTLS = RegistryTLS()
    auth: BasicAuth | BearerAuth | None = None
    timeout_s: float = 10.0


def registry_urls(url: str) -> list[str]:
    """The comma-separated URLs of ``schema_registry_url`` (the client fails over in turn)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def access_problems(access: RegistryAccess) -> list[str]:
    """What is wrong with these settings, each naming the setting and what to do."""
    urls = registry_urls(access.url)
    problems = [
        f"schema_registry_url {redact_url(url)!r} is not an http(s):// URL"
        for url in urls
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname
    ]
    if not urls:
        problems.append("schema_registry_url is empty: give http(s)://host:port")
    tls = access.tls
    if tls and not any(url.startswith("https://") for url in urls):
        problems.append(
            "schema_registry_ca_file, _cert_file and _key_file apply to https:// only: "
            "make schema_registry_url https:// or drop them"
        )
    if (tls.key_file is not None or tls.key_password is not None) and tls.cert_file is None:
        problems.append(
            "schema_registry_key_file and schema_registry_key_password need "
            "schema_registry_cert_file (the client certificate they belong to)"
        )
    in_url = any(urlsplit(url).username is not None for url in urls)
    if in_url and access.auth is not None:
        problems.append(
            "schema_registry_url carries user:password and schema_registry_user or "
            "schema_registry_token is set too: give the credentials one way"
        )
    return problems + _tls_problems(tls)


def _tls_problems(tls: RegistryTLS) -> list[str]:
    """Load the CA and the client certificate as the client will, naming what fails."""
    try:
        context = _verifying_context(tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        return [
            f"schema_registry_ca_file {tls.ca_file}: cannot load a CA certificate from it "
            f"({_reason(exc)}); give the PEM bundle (or folder) of the CA that signs the "
            "registry's certificate"
        ]
    if tls.cert_file is None:
        return []
    try:
        context.load_cert_chain(
            str(tls.cert_file),
            str(tls.key_file) if tls.key_file else None,
            tls.key_password,
        )
    except (OSError, ssl.SSLError) as exc:
        return [
            f"schema_registry_cert_file {tls.cert_file}"
            + (f" with schema_registry_key_file {tls.key_file}" if tls.key_file else "")
            + f": cannot load the client certificate and its key ({_reason(exc)}); give "
            "PEM files of one pair (the key in the certificate file or its own), and "
            "schema_registry_key_password if the key is encrypted"
        ]
    return []


def _verifying_context(ca: Path | None) -> ssl.SSLContext:
    if ca is None:
        return ssl.create_default_context()
    if ca.is_dir():
        return ssl.create_default_context(capath=str(ca))
    return ssl.create_default_context(cafile=str(ca))


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


def client_conf(access: RegistryAccess) -> dict[str, object]:
    """confluent-kafka's ``SchemaRegistryClient`` configuration; raises ConfigError first."""
    problems = access_problems(access)
    if problems:
        raise ConfigError("; ".join(problems))
    conf: dict[str, object] = {
        "url": ",".join(registry_urls(access.url)),
        "timeout": access.timeout_s,
        "max.retries": 0,  # retried by the caller, with its backoff, metrics and stop
    }
    tls = access.tls
    optional = {
        "ssl.ca.location": tls.ca_file,
        "ssl.certificate.location": tls.cert_file,
        "ssl.key.location": tls.key_file,
        "ssl.key.password": tls.key_password,
    }
    conf |= {name: str(value) for name, value in optional.items() if value is not None}
    match access.auth:
        case BasicAuth(user, password):
            conf["basic.auth.user.info"] = f"{user}:{password}"
        case BearerAuth(token, cluster):
            conf |= {
                "bearer.auth.credentials.source": "STATIC_TOKEN",
                "bearer.auth.token": token,
                "bearer.auth.logical.cluster": cluster,
            }
    return conf
