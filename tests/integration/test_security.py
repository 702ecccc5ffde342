"""The worker against a Redis that demands TLS and an ACL user, as a real process.

Debian's redis-server listens only on a TLS port with a self-signed certificate made here,
the default user is disabled, and ``cdc`` is the only account. The worker must apply the
stream with those credentials (password from a file) and, with wrong credentials or an
unverifiable certificate, stop at once with exit code 2, naming the setting to fix and
never printing a secret.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from cdc_cache.tools.devstack.process import ManagedProcess, free_port, require_binary
from tests.integration.cache import wait_until_equal
from tests.integration.services import ROOT, worker
from tests.integration.topics import produce, unique_topic
from tests.workload import RULES_YAML, Workload

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pa55-for-tests"  # what must never show up in logs or messages
WRONG = "wrong-Pa55-never-shown"


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca_file: Path
    password_file: Path

    def url(self, ca: bool = True) -> str:
        query = f"?ssl_ca_certs={self.ca_file}" if ca else ""
        return f"rediss://127.0.0.1:{self.port}/0{query}"

    def client(self) -> Redis:
        return Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.ca_file),
            username="cdc",
            password=PASSWORD,
        )


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (it is its own CA)."""
    cert, key = directory / "redis.crt", directory / "redis.key"
    argv = [
        require_binary("openssl", "apt-get install openssl"),
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert),
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    ]  # fmt: skip
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    home = tmp_path_factory.mktemp("redis-tls")
    cert, key = self_signed_certificate(home)
    password_file = home / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    port = free_port()
    argv = [
        require_binary("redis-server", "apt-get install redis-server"),
        "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        "--dir", str(home), "--save", "", "--appendonly", "no", "--daemonize", "no",
        "--user", "default", "off",
        "--user", "cdc", "on", f">{PASSWORD}", "~*", "&*", "+@all",
    ]  # fmt: skip
    server = TlsRedis(port, cert, password_file)
    process = ManagedProcess(f"redis-tls-{port}", argv, home)

    def ready() -> bool:
        try:
            return bool(server.client().ping())
        except Exception:
            return False

    process.start(ready, timeout=30)
    yield server
    process.stop()


def credentials(server: TlsRedis, password_file: Path | None = None) -> dict[str, str]:
    return {
        "CDC_CACHE_REDIS_USERNAME": "cdc",
        "CDC_CACHE_REDIS_PASSWORD_FILE": str(password_file or server.password_file),
    }


def test_worker_applies_changes_over_tls_as_an_acl_user(broker, tls_redis, tmp_path):
    topic = unique_topic()
    broker.create_topics({topic: 2})
    workload = Workload(seed=81, topic=topic)
    produce(broker.bootstrap, [m for tx in workload.transactions(300) for m in tx])
    service = worker(
        tmp_path, broker.bootstrap, tls_redis.url(), [topic], env=credentials(tls_redis)
    )
    client = tls_redis.client()
    client.flushdb()
    service.start()
    try:
        expected = workload.expected_cache()
        assert wait_until_equal(client, expected) == expected, service.tail()
        assert service.terminate() == 0, service.tail()
    finally:
        service.stop()
    log = service.log.read_text()
    assert f"rediss://127.0.0.1:{tls_redis.port}" in log  # the worker did log its target
    assert PASSWORD not in log


def run_worker(tmp_path: Path, brokers: str, topic: str, redis_url: str, env: dict[str, str]):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    argv = [
        sys.executable, "-m", "cdc_cache", "run", "--rules", str(rules),
        "--brokers", brokers, "--topic", topic, "--redis-url", redis_url,
        "--recovery-dir", str(tmp_path / "recovery"),
    ]  # fmt: skip
    return subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
    )


@pytest.mark.parametrize("how", ["password_file", "password_in_url"])
def test_wrong_credentials_stop_the_worker_naming_the_setting_without_the_secret(
    broker, tls_redis, tmp_path, how
):
    topic = unique_topic()
    broker.create_topics({topic: 1})
    if how == "password_file":
        wrong_file = tmp_path / "wrong-password"
        wrong_file.write_text(WRONG)
        url, env = tls_redis.url(), credentials(tls_redis, wrong_file)
    else:
        url, env = tls_redis.url().replace("//", f"//cdc:{WRONG}@"), {}
    result = run_worker(tmp_path, broker.bootstrap, topic, url, env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "invalid username-password pair" in output, output
    assert "redis_username and redis_password" in output, output
    assert WRONG not in output and PASSWORD not in output


def test_an_unverifiable_certificate_stops_the_worker_naming_ssl_ca_certs(
    broker, tls_redis, tmp_path
):
    topic = unique_topic()
    broker.create_topics({topic: 1})
    result = run_worker(
        tmp_path, broker.bootstrap, topic, tls_redis.url(ca=False), credentials(tls_redis)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "ssl_ca_certs" in output and "certificate" in output, output
    assert PASSWORD not in output


def test_credentials_revoked_mid_stream_stop_the_worker_as_a_config_error(
    broker, tls_redis, tmp_path
):
    admin = tls_redis.client()
    admin.flushdb()  # the cache state of earlier tests
    admin.acl_setuser("rotating", enabled=True, passwords=["+first-Pa55"], keys=["*"],
                      channels=["*"], commands=["+@all"])  # fmt: skip
    (tmp_path / "pw").write_text("first-Pa55")
    topic = unique_topic()
    broker.create_topics({topic: 1})
    workload = Workload(seed=82, topic=topic)
    produce(broker.bootstrap, [m for tx in workload.transactions(50) for m in tx])
    env = {
        "CDC_CACHE_REDIS_USERNAME": "rotating",
        "CDC_CACHE_REDIS_PASSWORD_FILE": str(tmp_path / "pw"),
    }
    service = worker(tmp_path, broker.bootstrap, tls_redis.url(), [topic], env=env)
    service.start()
    try:
        expected = workload.expected_cache()
        assert wait_until_equal(admin, expected) == expected, service.tail()
        admin.acl_setuser("rotating", enabled=True, reset_passwords=True, passwords=["+next-Pa55"])
        admin.client_kill_filter(user="rotating")
        produce(broker.bootstrap, [m for tx in workload.transactions(50) for m in tx])
        assert service.proc is not None
        status = service.proc.wait(timeout=60)  # stops: a refused login is not waited out
    finally:
        service.stop()
        admin.acl_deluser("rotating")
    log = service.log.read_text()
    assert status == 2, service.tail()
    assert "invalid username-password pair" in log and "redis_password" in log
    assert "first-Pa55" not in log and "next-Pa55" not in log


def test_wrong_credentials_stop_the_gateway_naming_the_setting_without_the_secret(tls_redis):
    url = tls_redis.url().replace("//", f"//cdc:{WRONG}@")
    argv = [
        sys.executable, "-m", "cdc_cache", "gateway", "--redis-url", url,
        "--secret", "k", "--port", str(free_port()),
    ]  # fmt: skip
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    (line,) = output.splitlines()
    assert "invalid username-password pair" in line and "redis_url" in line, line
    assert WRONG not in output and PASSWORD not in output


def test_a_registry_certificate_the_worker_cannot_verify_stops_its_start(tmp_path):
    """Avro's registry is checked at start: exit 2 naming the setting, before any message.

    (A worker given the CA starts through the same check: test_avro_e2e.)
    """
    from cdc_cache.tools.devstack.schema_registry import SchemaRegistryServer
    from tests.unit.test_schema_registry_access import Pki

    pki = Pki(tmp_path)
    registry = SchemaRegistryServer(free_port(), tls=pki.server_context()).start()
    env = {
        "CDC_CACHE_MESSAGE_FORMAT": "avro",
        "CDC_CACHE_SCHEMA_REGISTRY_URL": registry.address(),
    }
    nowhere = f"127.0.0.1:{free_port()}"  # checked first: no broker or Redis is reached
    try:
        refused = run_worker(tmp_path, nowhere, "t", f"redis://{nowhere}/0", env)
    finally:
        registry.stop()
    output = refused.stdout + refused.stderr
    assert refused.returncode == 2, output
    assert "schema_registry_ca_file" in output and "not trusted" in output, output
