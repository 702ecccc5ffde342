"""Whatever arrives on a topic either decodes or raises a poison error; nothing else.

And whatever it holds, however deeply nested, decode and plan raise nothing, and a
rejection becomes exactly one dead letter that can be written.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_cache.core.errors import DecodeError, MissingPrimaryKey
from cdc_cache.core.events import SourceRecord
from cdc_cache.source.envelope import decode
from tests.hostile import nested, through_the_worker_path
from tests.unit.test_envelope import ALL, load
from tests.unit.test_routed_topics import every_routed_record

RECORDED = [r.record for source, fmt in ALL for r in load(source, fmt)] + every_routed_record()
TOPICS = [*sorted({r.topic for r in RECORDED}), "x", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _decodes_or_poison(record: SourceRecord) -> None:
    try:
        decode(record)
    except (DecodeError, MissingPrimaryKey) as err:
        assert err.record == record


@given(st.sampled_from(TOPICS), st.none() | st.binary(max_size=64), st.none() | st.binary())
def test_any_bytes(topic: str, key: bytes | None, value: bytes | None) -> None:
    _decodes_or_poison(SourceRecord(topic, 0, 0, key, value))


@settings(max_examples=300)
@given(st.sampled_from(RECORDED), st.data())
def test_mutated_recorded_messages(record: SourceRecord, data: st.DataObject) -> None:
    """Replace one field anywhere in a recorded key or value with an arbitrary JSON value."""
    target = data.draw(st.sampled_from(["key", "value"]))
    raw = getattr(record, target)
    if raw is None:
        return
    doc = json.loads(raw)
    node = doc
    while isinstance(node, dict) and node:
        name = data.draw(st.sampled_from(sorted(node)))
        if not isinstance(node[name], dict) or data.draw(st.booleans()):
            node[name] = data.draw(json_values)
            break
        node = node[name]
    mutated = json.dumps(doc).encode()
    fields = {"key": record.key, "value": record.value, target: mutated}
    _decodes_or_poison(SourceRecord(record.topic, 0, 0, fields["key"], fields["value"]))


@given(st.sampled_from(RECORDED), st.integers(0, 10_000), st.binary(max_size=4))
def test_truncated_and_spliced_recorded_values(record: SourceRecord, cut: int, junk: bytes) -> None:
    value = record.value or b""
    _decodes_or_poison(SourceRecord(record.topic, 0, 0, record.key, value[:cut] + junk))


# Up to past the parser's limit (1,024), through the encoder's (254) and Python's (~1,000).
depths = st.integers(1, 1030) | st.sampled_from([127, 128, 253, 254, 255, 998, 1000, 1024])
leaves = st.sampled_from([b"0", b'"ann@example.com"', b"null", b"{}", b"[]", b"true"])


def row_of(doc: object) -> object:
    """Where a change's columns are: the after image, or the flattened row itself."""
    if isinstance(doc, dict) and isinstance(doc.get("payload"), dict) and "schema" in doc:
        doc = doc["payload"]
    if isinstance(doc, dict) and isinstance(doc.get("after"), dict):
        return doc["after"]
    return doc


def deepen(raw: bytes, data: st.DataObject, depth: int, leaf: bytes) -> bytes:
    """``raw`` (a JSON document) with one field nested ``depth`` levels deep.

    Half the time a column of the row (projected, in a key, in a notification), else
    any field at any depth (the envelope's own fields, the schema, the key).
    """
    doc = json.loads(raw)
    node = row_of(doc) if data.draw(st.booleans()) else doc
    while isinstance(node, dict) and node:
        name = data.draw(st.sampled_from(sorted(node)))
        if not isinstance(node[name], dict) or data.draw(st.booleans()):
            node[name] = "@@deep@@"
            break
        node = node[name]
    else:
        doc = "@@deep@@"
    return json.dumps(doc).encode().replace(b'"@@deep@@"', nested(depth, leaf), 1)


CHANGES = [r for r in RECORDED if b'"op"' in (r.value or b"")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CHANGES), st.data(), depths, leaves)
def test_deep_nesting_anywhere_is_planned_or_dead_lettered(
    record: SourceRecord, data: st.DataObject, depth: int, leaf: bytes
) -> None:
    """A key or value field of a recorded change replaced by a deep value."""
    target = data.draw(st.sampled_from(["key", "value"]))
    raw = getattr(record, target)
    if raw is None:
        return
    fields = {"key": record.key, "value": record.value, target: deepen(raw, data, depth, leaf)}
    through_the_worker_path(SourceRecord(record.topic, 0, 0, fields["key"], fields["value"]))
