"""The schema-prefix shortcut of the decoder gives exactly what a full parse gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import DecodeError
from cdc_cache.core.events import SourceRecord
from cdc_cache.source import envelope
from cdc_cache.source.envelope import SchemaPrefixes, decode

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures/debezium/mariadb/schemas.jsonl"


def _records() -> list[SourceRecord]:
    out = []
    for offset, line in enumerate(FIXTURE.read_text().splitlines()):
        doc = json.loads(line)
        key, value = doc["key"], doc["value"]
        out.append(
            SourceRecord(
                doc["topic"],
                0,
                offset,
                None if key is None else key.encode(),
                None if value is None else value.encode(),
            )
        )
    return out


def _outcome(record: SourceRecord) -> Any:
    try:
        return decode(record)
    except DecodeError as exc:
        return (type(exc), str(exc))


def test_recorded_stream_decodes_the_same_with_warm_prefixes(monkeypatch: Any) -> None:
    records = _records()
    prefixes = SchemaPrefixes()
    monkeypatch.setattr(envelope, "SCHEMA_PREFIXES", prefixes)
    cold = []
    for record in records:
        prefixes._prefixes.clear()
        cold.append(_outcome(record))
    for record in records:
        _outcome(record)  # learn every stream's prefix
    assert prefixes._prefixes, "no prefix was learned from the recorded wrapped records"
    assert [_outcome(r) for r in records] == cold


def _learned() -> tuple[SchemaPrefixes, bytes, dict[str, Any]]:
    record = next(r for r in _records() if r.value and b'"op":"u"' in r.value)
    assert record.value is not None
    doc = orjson.loads(record.value)
    prefixes = SchemaPrefixes()
    prefixes.learn("t", record.value, doc["schema"])
    return prefixes, record.value, doc


def test_a_known_prefix_parses_only_the_payload() -> None:
    prefixes, value, doc = _learned()
    assert prefixes.payload("t", value) == doc["payload"]
    assert prefixes.payload("other-topic", value) is envelope._MISS


def test_another_schema_misses() -> None:
    prefixes, value, _ = _learned()
    changed = value.replace(b'"optional":false', b'"optional":true', 1)
    assert prefixes.payload("t", changed) is envelope._MISS


# Tails after the learned prefix: payloads, payloads followed by more keys, duplicate
# payload keys, truncations and junk; the shortcut must agree with the full parse.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
).map(orjson.dumps)
_TAIL = st.one_of(
    _JSON.map(lambda p: p + b"}"),
    st.tuples(_JSON, _JSON).map(lambda t: t[0] + b',"extra":' + t[1] + b"}"),
    st.tuples(_JSON, _JSON).map(lambda t: t[0] + b',"payload":' + t[1] + b"}"),
    _JSON.map(lambda p: p + b" } "),
    _JSON,
    st.binary(max_size=20),
)


@given(_TAIL)
def test_the_shortcut_agrees_with_the_full_parse(tail: bytes) -> None:
    prefixes, value, _ = _learned()
    end = value.index(b',"payload":') + len(b',"payload":')
    data = value[:end] + tail

    def parsed(cache: SchemaPrefixes | None) -> Any:
        try:
            if cache is None:
                return ("ok", envelope.parse_json(data, "value"))
            previous = envelope.SCHEMA_PREFIXES
            envelope.SCHEMA_PREFIXES = cache  # type: ignore[misc]
            try:
                return ("ok", envelope.parse_json(data, "value", "t"))
            finally:
                envelope.SCHEMA_PREFIXES = previous  # type: ignore[misc]
        except DecodeError as exc:
            return ("error", str(exc))

    assert parsed(prefixes) == parsed(None)


def test_a_shared_topic_keeps_the_prefix_of_every_table_routed_into_it() -> None:
    """Tables routed into one topic alternate schemas: each keeps its shortcut."""
    wrapped = [r for r in _records() if r.value and r.value.startswith(b'{"schema":')]
    by_schema = {orjson.dumps(orjson.loads(r.value)["schema"]): r.value for r in wrapped}
    values = [v for v in by_schema.values() if v is not None][:3]
    assert len(values) == 3, "the recording holds several tables' schemas"
    prefixes = SchemaPrefixes(per_stream=2)
    for value in values:
        prefixes.learn("inventory.cdc\x00value", value, orjson.loads(value)["schema"])
    hits = [prefixes.payload("inventory.cdc\x00value", v) is not envelope._MISS for v in values]
    assert hits == [False, True, True]  # the oldest fell out; the last two both hit
    for value in values[1:]:
        assert prefixes.payload("inventory.cdc\x00value", value) == orjson.loads(value)["payload"]
