"""Whatever arrives on a topic either decodes or raises a poison error; nothing else."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_cache.envelope import decode
from cdc_cache.errors import DecodeError, MissingPrimaryKey
from cdc_cache.events import SourceRecord
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
