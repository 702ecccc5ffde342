"""The Schema Registry client over real HTTP, against the devstack registry server."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest

from cdc_cache.core import metrics
from cdc_cache.core.errors import ConfigError, TransientError
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.retry import Backoff
from cdc_cache.plan.route import Rejected, route
from cdc_cache.source.avro import AvroSchema
from cdc_cache.source.schema_registry import SchemaRegistryClient, SchemaResolver
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.schema_registry import SchemaRegistryServer
from tests.hostile import FUZZ_RULES
from tests.unit.test_avro import load_avro

SCHEMA = json.dumps({"type": "record", "name": "K", "fields": [{"name": "id", "type": "int"}]})


def schema(n: int) -> str:
    return json.dumps({"type": "record", "name": f"R{n}", "fields": [{"name": "a", "type": "int"}]})


@pytest.fixture
def registry() -> Iterator[SchemaRegistryServer]:
    server = SchemaRegistryServer(free_port()).start()
    yield server
    server.stop()


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_register_is_idempotent_and_ids_are_served(registry):
    base = registry.address()
    first = post(f"{base}/subjects/t-key/versions", {"schema": SCHEMA})
    again = post(f"{base}/subjects/t2-key/versions?normalize=false", {"schema": SCHEMA})
    assert first == again == {"id": 1}
    assert post(f"{base}/subjects/t-key", {"schema": SCHEMA})["version"] == 1
    fetched = SchemaRegistryClient(base).schemas([1])[1]
    assert isinstance(fetched, AvroSchema) and fetched.text == SCHEMA


def test_schemas_are_cached_by_id_and_the_cache_is_bounded(registry):
    registry.load({1: schema(1), 2: schema(2), 3: schema(3)})
    client = SchemaRegistryClient(registry.address(), max_cached=2)
    client.schemas([1, 2])
    client.schemas([1, 2])
    assert registry.requests.count("GET schemas/ids/1") == 1
    client.schemas([3])  # evicts the least recently used (1)
    client.schemas([2, 1])
    assert registry.requests.count("GET schemas/ids/1") == 2
    assert registry.requests.count("GET schemas/ids/2") == 1


def test_unknown_id_is_a_reason_not_an_error_and_is_asked_again(registry):
    client = SchemaRegistryClient(registry.address())
    assert client.schemas([42])[42] == (
        f"schema id 42 is not in the schema registry at {registry.address()}"
    )
    registry.load({42: schema(42)})
    assert isinstance(client.schemas([42])[42], AvroSchema)


def test_unreachable_registry_is_retried_with_backoff_until_it_answers():
    port = free_port()
    server = SchemaRegistryServer(port)
    server.load({7: schema(7)})
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            server.start()

    resolver = SchemaResolver(
        SchemaRegistryClient(server.address(), timeout_s=2), Backoff(initial=0.01), sleep
    )
    retries = metrics.RETRIES.labels("schema_registry")._value.get()
    value = b"\x00\x00\x00\x00\x07\x02"  # schema id 7, a = 1
    try:
        parser = resolver.parser_for([SourceRecord("t.db.x", 0, 0, None, value)])
    finally:
        server.stop()
    assert len(sleeps) == 3
    assert metrics.RETRIES.labels("schema_registry")._value.get() == retries + 3
    assert parser(value, "value") == {"a": 1}


def test_registry_outage_is_transient():
    with pytest.raises(TransientError, match="unreachable"):
        SchemaRegistryClient(f"http://127.0.0.1:{free_port()}", timeout_s=2).schemas([1])


def test_refused_credentials_are_a_config_error_without_the_password():
    server = SchemaRegistryServer(free_port(), credentials=("cdc", "right-pass")).start()
    try:
        url = server.address().replace("//", "//cdc:right-pass@")
        assert isinstance(SchemaRegistryClient(url).schemas([1])[1], str)  # accepted: 404 reason
        wrong = server.address().replace("//", "//cdc:wrong-pass@")
        with pytest.raises(
            ConfigError, match=r"refused access \(401\).*schema_registry_url"
        ) as err:
            SchemaRegistryClient(wrong).schemas([1])
        assert "wrong-pass" not in str(err.value)
    finally:
        server.stop()


def test_a_server_that_is_not_a_registry_is_a_config_error(registry):
    with pytest.raises(ConfigError, match="is it a Confluent Schema Registry"):
        SchemaRegistryClient(registry.address() + "/nope").schemas([1])


@pytest.mark.parametrize("sid", [2**31, 2**32 - 1])
def test_a_header_naming_an_id_no_registry_numbers_is_poison_and_not_asked_for(registry, sid):
    """Ids are Java ints: Confluent's registry answers a larger one as a path it does not
    serve (404, error code 404), which the client must take for a URL to fix. One message
    with such a header stopped the worker."""
    registry.load({1: SCHEMA})
    good = SourceRecord("t", 0, 0, None, b"\x00\x00\x00\x00\x01\x0e")  # {"id": 7}
    hostile = SourceRecord("t", 0, 1, None, b"\x00" + sid.to_bytes(4, "big") + b"\x0e")
    parser = SchemaResolver(SchemaRegistryClient(registry.address())).parser_for([good, hostile])
    assert parser(good.value, "value") == {"id": 7}
    rejected = route(hostile, FUZZ_RULES, parse=parser)
    assert isinstance(rejected, Rejected) and rejected.error.kind == "undecodable"
    assert f"schema id {sid}, above 2147483647" in rejected.error.reason
    assert all(str(sid) not in request for request in registry.requests)


def test_resolver_fetches_each_id_of_a_batch_once(registry):
    records, schemas = load_avro("mariadb")
    registry.load({sid: s.text for sid, s in schemas.items() if isinstance(s, AvroSchema)})
    resolver = SchemaResolver(SchemaRegistryClient(registry.address()))
    parser = resolver.parser_for(r.record for r in records)
    fetched = [r for r in registry.requests if r.startswith("GET schemas/ids/")]
    assert len(fetched) == len(set(fetched)) == len(schemas)
    for recorded in records:
        if recorded.record.value is not None:
            assert isinstance(parser(recorded.record.value, "value"), dict)
