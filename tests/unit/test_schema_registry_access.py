"""Reaching the Schema Registry: basic auth, bearer tokens, TLS with a custom CA, mTLS.

Against the devstack registry over real HTTP(S), with a CA and certificates made per test
(trustme); and the ``schema_registry_*`` settings checked at startup, each problem naming
the setting to fix.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from cdc_cache.app.load import load_settings
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.events import SourceRecord
from cdc_cache.source.avro import AvroSchema
from cdc_cache.source.registry_access import BasicAuth, BearerAuth, RegistryTLS
from cdc_cache.source.schema_registry import SchemaRegistryClient, schema_resolver
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.schema_registry import SchemaRegistryServer

SCHEMA = json.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]})
VALUE = b"\x00\x00\x00\x00\x07\x02"  # schema id 7, a = 1


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CDC_CACHE_"):
            monkeypatch.delenv(name)


class Pki:
    """A CA, the registry's certificate for 127.0.0.1 and a client certificate, as files."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1")
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        client = self.ca.issue_cert("cdc-cache-worker")
        self.cert_file = folder / "client.pem"
        self.key_file = folder / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.cert_file))
        client.private_key_pem.write_to_path(str(self.key_file))
        self.encrypted_key_file = folder / "client-encrypted.key"
        key = serialization.load_pem_private_key(client.private_key_pem.bytes(), None)
        self.encrypted_key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"key-pass"),
            )
        )

    def server_context(self, *, client_certs: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        if client_certs:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def serve(**options: object) -> SchemaRegistryServer:
    server = SchemaRegistryServer(free_port(), **options)  # type: ignore[arg-type]
    server.load({7: SCHEMA})
    return server.start()


@pytest.fixture
def stop() -> Iterator[list[SchemaRegistryServer]]:
    servers: list[SchemaRegistryServer] = []
    yield servers
    for server in servers:
        server.stop()


def test_basic_auth_from_its_settings_is_sent_and_a_wrong_password_is_a_config_error(stop):
    server = serve(credentials=("cdc", "right-pass"))
    stop.append(server)
    client = SchemaRegistryClient(server.address(), auth=BasicAuth("cdc", "right-pass"))
    assert isinstance(client.schemas([7])[7], AvroSchema)
    wrong = SchemaRegistryClient(server.address(), auth=BasicAuth("cdc", "wrong-pass"))
    with pytest.raises(ConfigError, match=r"refused access \(401\).*schema_registry_user") as err:
        wrong.schemas([7])
    assert "wrong-pass" not in str(err.value)


def test_a_bearer_token_is_sent_and_a_wrong_one_is_a_config_error(stop):
    server = serve(token="tok-123")
    stop.append(server)
    client = SchemaRegistryClient(server.address(), auth=BearerAuth("tok-123"))
    assert isinstance(client.schemas([7])[7], AvroSchema)
    with pytest.raises(ConfigError, match=r"refused access \(401\).*schema_registry_token"):
        SchemaRegistryClient(server.address(), auth=BearerAuth("stale")).schemas([7])


def test_https_with_a_custom_ca_is_trusted_only_through_schema_registry_ca_file(pki, stop):
    server = serve(tls=pki.server_context(), credentials=("cdc", "pw"))
    stop.append(server)
    assert server.address().startswith("https://")
    trusted = SchemaRegistryClient(
        server.address(), tls=RegistryTLS(ca_file=pki.ca_file), auth=BasicAuth("cdc", "pw")
    )
    assert isinstance(trusted.schemas([7])[7], AvroSchema)
    # Without the CA the system store does not vouch for the certificate: a setting to fix,
    # not an outage to wait out.
    untrusted = SchemaRegistryClient(server.address(), auth=BasicAuth("cdc", "pw"))
    with pytest.raises(ConfigError, match=r"not trusted.*set schema_registry_ca_file"):
        untrusted.schemas([7])


def test_mtls_sends_the_client_certificate_and_its_absence_names_the_setting(pki, stop):
    server = serve(tls=pki.server_context(client_certs=True))
    stop.append(server)
    with_cert = RegistryTLS(ca_file=pki.ca_file, cert_file=pki.cert_file, key_file=pki.key_file)
    fetched = SchemaRegistryClient(server.address(), tls=with_cert).schemas([7])[7]
    assert isinstance(fetched, AvroSchema)
    encrypted = RegistryTLS(pki.ca_file, pki.cert_file, pki.encrypted_key_file, "key-pass")
    fetched = SchemaRegistryClient(server.address(), tls=encrypted).schemas([7])[7]
    assert isinstance(fetched, AvroSchema)
    without = SchemaRegistryClient(server.address(), tls=RegistryTLS(ca_file=pki.ca_file))
    with pytest.raises(ConfigError, match=r"client certificate.*schema_registry_cert_file"):
        without.schemas([7])


def test_worker_settings_reach_an_https_registry_with_basic_auth(pki, stop, tmp_path):
    server = serve(tls=pki.server_context(), credentials=("cdc", "from-a-file"))
    stop.append(server)
    password_file = tmp_path / "registry-password"
    password_file.write_text("from-a-file\n")
    settings = load_settings(
        rules=Path("r.yaml"),
        topics=("a",),
        message_format="avro",
        schema_registry_url=server.address(),
        schema_registry_ca_file=pki.ca_file,
        schema_registry_user="cdc",
        schema_registry_password_file=password_file,
    )
    resolver = schema_resolver(settings)
    assert resolver is not None
    parser = resolver.parser_for([SourceRecord("t.db.x", 0, 0, None, VALUE)])
    assert parser(VALUE, "value") == {"a": 1}
    assert "from-a-file" not in repr(settings)


def startup(**registry: object) -> str:
    with pytest.raises(ConfigError) as err:
        load_settings(
            **{"rules": Path("r.yaml"), "topics": ("a",), "message_format": "avro"} | registry
        )
    return str(err.value)


def test_startup_refuses_registry_settings_that_cannot_work(pki, tmp_path):
    https, http = "https://registry:8081", "http://registry:8081"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    (tmp_path / "other").mkdir()
    other_key = Pki(tmp_path / "other")  # a key that is not the client certificate's
    cases = {
        "schema_registry_key_file and schema_registry_key_password need schema_registry_cert_file": {
            "schema_registry_url": https,
            "schema_registry_key_file": pki.key_file,
        },
        "apply to https:// only": {
            "schema_registry_url": http,
            "schema_registry_ca_file": pki.ca_file,
        },
        f"schema_registry_ca_file {tmp_path / 'missing.pem'}: cannot load": {
            "schema_registry_url": https,
            "schema_registry_ca_file": tmp_path / "missing.pem",
        },
        f"schema_registry_ca_file {not_pem}: cannot load": {
            "schema_registry_url": https,
            "schema_registry_ca_file": not_pem,
        },
        "cannot load the client certificate and its key": {
            "schema_registry_url": https,
            "schema_registry_cert_file": pki.cert_file,
            "schema_registry_key_file": other_key.key_file,
        },
        "and schema_registry_key_password if the key is encrypted": {
            "schema_registry_url": https,
            "schema_registry_cert_file": pki.cert_file,
            "schema_registry_key_file": pki.encrypted_key_file,
            "schema_registry_key_password": "wrong",
        },
        "schema_registry_user and schema_registry_password go together": {
            "schema_registry_url": https,
            "schema_registry_user": "cdc",
        },
        "give schema_registry_user (basic auth) or schema_registry_token, not both": {
            "schema_registry_url": https,
            "schema_registry_user": "cdc",
            "schema_registry_password": "pw",
            "schema_registry_token": "tok",
        },
        "give the credentials one way": {
            "schema_registry_url": "https://cdc:pw@registry:8081",
            "schema_registry_token": "tok",
        },
        "schema_registry_ca_file need schema_registry_url": {
            "message_format": "json",
            "schema_registry_ca_file": pki.ca_file,
        },
        "is not an http(s):// URL": {"schema_registry_url": "registry:8081"},
    }
    for expected, registry in cases.items():
        assert expected in startup(**registry), expected


def test_startup_accepts_a_complete_mtls_and_token_setup(pki):
    settings = load_settings(
        rules=Path("r.yaml"),
        topics=("a",),
        message_format="avro",
        schema_registry_url="https://registry-a:8081, https://registry-b:8081",
        schema_registry_ca_file=pki.ca_file,
        schema_registry_cert_file=pki.cert_file,
        schema_registry_key_file=pki.key_file,
        schema_registry_token="tok",
        schema_registry_cluster_id="lsrc-123",
    )
    access = settings.schema_registry_access()
    assert access is not None
    assert access.auth == BearerAuth("tok", "lsrc-123")
    assert access.tls == RegistryTLS(pki.ca_file, pki.cert_file, pki.key_file, None)


def test_the_start_check_waits_out_an_outage_and_stops_on_refused_credentials(stop):
    from cdc_cache.core import metrics
    from cdc_cache.core.retry import Backoff
    from cdc_cache.source.schema_registry import SchemaResolver

    server = SchemaRegistryServer(free_port(), credentials=("cdc", "pw"))
    stop.append(server)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            server.start()

    client = SchemaRegistryClient(server.address(), auth=BasicAuth("cdc", "pw"), timeout_s=2)
    retries = metrics.RETRIES.labels("schema_registry")._value.get()
    SchemaResolver(client, Backoff(initial=0.01), sleep).check()
    assert len(sleeps) == 2
    assert metrics.RETRIES.labels("schema_registry")._value.get() == retries + 2
    assert server.requests[-1] == "GET subjects"
    wrong = SchemaRegistryClient(server.address(), auth=BasicAuth("cdc", "nope"))
    with pytest.raises(ConfigError, match=r"refused access \(401\)"):
        SchemaResolver(wrong, Backoff(initial=0.01), sleep).check()
    assert len(sleeps) == 2, "a refusal is not retried"
