"""DLQ entries: ids, envelope fields, redaction, filters, and the stored copy's round trip."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.core.errors import POISON_KINDS, DecodeError, RenderError, Unprocessable
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.nesting import ENCODER_MAX_DEPTH
from cdc_cache.dlq.entries import (
    MAX_ENTRY_DEPTH,
    MAX_PART_BYTES,
    MAX_REASON_CHARS,
    REDACTED,
    Failure,
    entry_id,
    envelope,
    iso_utc,
    malformed,
    parse_iso_ms,
    record_of,
    redact,
    shrunk,
    writable,
)
from cdc_cache.dlq.filters import EntryFilter, entry_filter, latest_by_id
from cdc_cache.plan.route import Rejected, route
from cdc_cache.plan.rules_loader import parse_rules
from tests.hostile import nested
from tests.workload import RULES_YAML, Workload

NOW_MS = 1_790_000_000_123
SENSITIVE_RULES = parse_rules(
    RULES_YAML.replace("    watch:", "    sensitive: [note, qty]\n    watch:", 1)
)

coords = st.tuples(st.text(max_size=20), st.integers(0, 1000), st.integers(0, 2**62))


@given(coords, st.sampled_from(POISON_KINDS))
def test_entry_id_is_a_function_of_coordinates_and_kind(where, kind):
    assert entry_id(*where, kind) == entry_id(*where, kind)
    assert len(entry_id(*where, kind)) == 32


@given(coords, coords, st.sampled_from(POISON_KINDS), st.sampled_from(POISON_KINDS))
def test_different_failures_get_different_ids(a, b, kind_a, kind_b):
    if (a, kind_a) != (b, kind_b):
        assert entry_id(*a, kind_a) != entry_id(*b, kind_b)


def test_separator_keeps_topic_and_partition_apart():
    assert entry_id("t1", 23, 4, "undecodable") != entry_id("t12", 3, 4, "undecodable")


@given(st.integers(0, 4_000_000_000_000))
def test_failed_at_round_trips_to_the_millisecond(ms):
    assert parse_iso_ms(iso_utc(ms)) == ms


def rejected_change(value_edit: dict[str, object]) -> Rejected:
    message = Workload(seed=3).transactions(1)[0][0]
    doc = orjson.loads(message.value or b"")
    doc["after"] = {**doc["after"], **value_edit}
    for column in [c for c, v in value_edit.items() if v is None]:
        del doc["after"][column]
    record = SourceRecord(message.topic, 2, 41, message.key, orjson.dumps(doc), 1700)
    routed = route(record, SENSITIVE_RULES)
    assert isinstance(routed, Rejected)
    return routed


def test_envelope_of_a_change_that_cannot_render_has_every_field():
    routed = rejected_change({"warehouse": None, "note": "secret note"})
    assert routed.event is not None
    entry = envelope(Failure(routed.error, "inventory.stock", routed.event), frozenset(), NOW_MS)

    assert entry["id"] == entry_id(routed.record.topic, 2, 41, "render_failed")
    assert entry["kind"] == "render_failed"
    assert entry["failed_at"] == iso_utc(NOW_MS)
    assert (entry["attempt"], entry["max_attempts"]) == (1, 1)
    assert (entry["next_retry_at"], entry["backoff_ms"]) == (None, None)
    assert "warehouse" in entry["reason"]
    assert entry["error_class"] == "RenderError"
    assert "RenderError" in entry["stack"] and "Traceback" in entry["stack"]
    assert entry["source"] == {"topic": routed.record.topic, "partition": 2, "offset": 41}
    assert entry["position"] == str(routed.event.position)
    assert entry["table"] == "inventory.stock"
    assert entry["primary_key"] == dict(routed.event.key)
    assert entry["message"]["value"]["encoding"] == "json"
    assert entry["message"]["value"]["data"]["after"]["note"] == "secret note"
    assert entry["message"]["redacted"] == []
    assert orjson.loads(orjson.dumps(entry)) == entry  # JSON-ready


def test_an_entry_too_large_for_the_topic_shrinks_to_its_coordinates_in_two_steps():
    routed = rejected_change({"warehouse": None, "note": "x" * 60_000})
    entry = envelope(Failure(routed.error, "inventory.stock", routed.event), frozenset(), NOW_MS)

    compact = shrunk(entry, "Broker: Message size too large")
    assert compact is not None and len(orjson.dumps(compact)) < 8_000
    assert set(compact) == set(entry)  # the same fields, those left out null
    assert compact["message"] is compact["primary_key"] is compact["stack"] is None
    assert {k: v for k, v in compact.items() if k not in ("message", "primary_key", "stack",
            "withheld")} == {k: v for k, v in entry.items() if k not in (
            "message", "primary_key", "stack", "withheld")}  # fmt: skip
    assert compact["withheld"] == [
        "stack, primary_key, message: the entry was too large for the DLQ topic "
        "(Broker: Message size too large)"
    ]

    coordinates = shrunk(compact, "still too large")
    assert coordinates is not None
    assert {k for k, v in coordinates.items() if v is not None} == {
        "id", "kind", "failed_at", "attempt", "max_attempts", "error_class", "source",
        "withheld",
    }  # fmt: skip
    assert len(coordinates["withheld"]) == 2
    assert shrunk(coordinates, "still too large") is None  # nothing smaller names the message
    assert malformed(entry) is malformed(compact) is malformed(coordinates) is None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ([1], "a JSON list, not an object"),
        ({"kind": "k", "source": {}}, "its id is None, not a text"),
        ({"id": "i", "kind": 3}, "its kind is 3, not a text"),
        ({"id": "i", "kind": "k"}, "its source None names no topic"),
        ({"id": "i", "kind": "k", "source": {"topic": 1}}, "names no topic"),
        ({"id": "i", "kind": "k", "source": {"topic": "t", "offset": 1}}, "source partition is None"),
        ({"id": "i", "kind": "k", "source": {"topic": "t", "partition": True, "offset": 1}},
         "source partition is True"),
        ({"id": "i", "kind": "k", "source": {"topic": "t", "partition": 0, "offset": -1}},
         "source offset is -1"),
        ({"id": "i", "kind": "k", "source": {"topic": "t", "partition": 0, "offset": 1},
          "message": "text"}, "message copy is not an object"),
    ],
)  # fmt: skip
def test_a_dlq_message_of_another_shape_is_named_malformed_with_what_is_wrong(
    entry: object, problem: str
) -> None:
    assert problem in (malformed(entry) or "")


def test_sensitive_columns_are_redacted_everywhere_and_listed():
    routed = rejected_change({"warehouse": None, "note": "secret note"})
    failure = Failure(routed.error, "inventory.stock", routed.event)
    entry = envelope(failure, SENSITIVE_RULES.sensitive("inventory.stock"), NOW_MS)

    text = orjson.dumps(entry).decode()
    assert "secret note" not in text
    value = entry["message"]["value"]["data"]
    assert value["after"]["note"] == REDACTED and value["after"]["qty"] == REDACTED
    assert entry["message"]["redacted"] == ["note", "qty"]
    with pytest.raises(ValueError, match="redacted"):
        record_of(entry)  # a redacted copy is never replayed


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda kids: (
            st.lists(kids, max_size=3)
            | st.dictionaries(st.sampled_from(["a", "note", "b", "qty"]), kids, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_redaction_leaves_no_sensitive_value(doc):
    clean, found = redact(doc, frozenset({"note", "qty"}))

    def sensitive(node):
        """(column, value) of every sensitive, non-null mapping entry at any depth."""
        if isinstance(node, dict):
            for name, value in node.items():
                if name in {"note", "qty"} and value is not None:
                    yield name, value
                else:
                    yield from sensitive(value)
        elif isinstance(node, list):
            for item in node:
                yield from sensitive(item)

    assert all(value == REDACTED for _, value in sensitive(clean))
    assert found == {name for name, _ in sensitive(doc)}


@given(st.binary(max_size=200), st.none() | st.binary(max_size=50))
def test_stored_copy_of_an_unredacted_message_round_trips(value, key):
    record = SourceRecord("orders.x.y", 0, 7, key, value, 5)
    entry = envelope(Failure(DecodeError("bad", record), "x.y"), frozenset(), NOW_MS)
    back = record_of(entry)
    assert back.topic == record.topic and back.offset == 7
    for original, copy in ((record.key, back.key), (record.value, back.value)):
        if original is None:
            assert copy is None
        else:
            assert copy is not None
            try:
                assert orjson.loads(copy) == orjson.loads(original)
            except orjson.JSONDecodeError:
                assert copy == original


def test_non_json_message_of_a_table_with_sensitive_columns_is_withheld():
    record = SourceRecord("dbserver1.inventory.stock", 0, 1, b"k", b"note=secret", None)
    failure = Failure(DecodeError("not json", record), "inventory.stock")
    entry = envelope(failure, frozenset({"note"}), NOW_MS)
    assert entry["message"]["value"] == {"encoding": "withheld", "size": 11, "data": None}
    assert "secret" not in orjson.dumps(entry).decode()


def test_a_huge_message_is_left_out_of_the_entry():
    record = SourceRecord("t.a.b", 0, 1, None, b"x" * (MAX_PART_BYTES + 1), None)
    entry = envelope(Failure(DecodeError("big", record), "a.b"), frozenset(), NOW_MS)
    assert entry["message"]["value"]["encoding"] == "omitted"
    assert len(orjson.dumps(entry)) < 2 * MAX_PART_BYTES
    with pytest.raises(ValueError, match="omitted"):
        record_of(entry)


def test_primary_key_of_an_undecodable_message_comes_from_its_key():
    key = b'{"schema": {"type": "struct"}, "payload": {"id": 4}}'
    record = SourceRecord("t.a.b", 0, 1, key, b"{nope", None)
    entry = envelope(Failure(DecodeError("x", record), "a.b"), frozenset(), NOW_MS)
    assert entry["primary_key"] == {"id": 4}
    assert entry["position"] is None


def entry(id_: str, table: str, kind: str, at_ms: int) -> dict[str, object]:
    return {"id": id_, "table": table, "kind": kind, "failed_at": iso_utc(at_ms)}


ENTRIES = [
    entry("a", "inv.stock", "undecodable", 1000),
    entry("b", "inv.stock", "redis_refused", 2000),
    entry("c", "inv.sku", "undecodable", 3000),
]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (EntryFilter(), "abc"),
        (EntryFilter(table="inv.stock"), "ab"),
        (EntryFilter(kind="undecodable"), "ac"),
        (EntryFilter(table="inv.stock", kind="undecodable"), "a"),
        (EntryFilter(since_ms=2000), "bc"),
        (EntryFilter(until_ms=2000), "ab"),
        (EntryFilter(since_ms=1500, until_ms=2500), "b"),
        (EntryFilter(ids=frozenset({"c", "zz"})), "c"),
    ],
)
def test_filters(where, expected):
    assert "".join(str(e["id"]) for e in ENTRIES if where.matches(e)) == expected


def test_filter_from_user_input_parses_times_and_names_a_bad_one():
    assert entry_filter(" inv.stock ", "", "2026-01-01T00:00:00Z", None) == EntryFilter(
        table="inv.stock", since_ms=1767225600000
    )
    assert entry_filter(until="2026-01-01T01:00:00+01:00").until_ms == 1767225600000
    with pytest.raises(ValueError, match="until 'soon' is not an ISO 8601 time"):
        entry_filter(until="soon")


def test_redelivered_failures_collapse_to_one_entry_per_id():
    again = {**ENTRIES[0], "failed_at": iso_utc(9000)}
    collapsed = latest_by_id([*ENTRIES, again])
    assert [e["id"] for e in collapsed] == ["a", "b", "c"]
    assert collapsed[0]["failed_at"] == iso_utc(9000)


def test_render_error_kind_matches_contract():
    assert RenderError.kind == "render_failed"
    assert set(POISON_KINDS) == {
        "undecodable", "no_primary_key", "render_failed", "redis_refused", "value_too_large",
        "unprocessable",
    }  # fmt: skip


def deep_record(depth: int, key: bytes | None = b'{"id": 4}') -> SourceRecord:
    return SourceRecord("t.a.b", 0, 1, key, b'{"op": "c", "deep": ' + nested(depth) + b"}", None)


@pytest.mark.parametrize("depth", [MAX_ENTRY_DEPTH, ENCODER_MAX_DEPTH + 1, 1000, 1023])
def test_an_entry_of_deeply_nested_json_is_always_written_and_says_what_it_changed(depth):
    record = deep_record(depth)
    entry = envelope(Failure(DecodeError("deep", record), "a.b"), frozenset(), NOW_MS)
    assert orjson.loads(orjson.dumps(entry)) == entry
    value = entry["message"]["value"]
    if depth + 1 <= MAX_ENTRY_DEPTH:
        assert value["encoding"] == "json"
    else:  # kept as the text it was, so the copy still replays the original bytes
        assert value["encoding"] == "text"
        assert value["note"] == f"JSON nested more than {MAX_ENTRY_DEPTH} levels deep"
    assert record_of(entry).value == record.value or value["encoding"] == "json"


def test_deep_json_of_a_table_with_sensitive_columns_is_withheld():
    entry = envelope(Failure(DecodeError("deep", deep_record(300)), "a.b"), frozenset({"x"}), 0)
    assert entry["message"]["value"]["encoding"] == "withheld"
    assert entry["message"]["value"]["data"] is None


def test_a_deeply_nested_primary_key_is_withheld_and_noted():
    key = b'{"id": ' + nested(1000) + b"}"
    record = deep_record(3, key)
    entry = envelope(Failure(DecodeError("x", record), "a.b"), frozenset({"email"}), NOW_MS)
    assert entry["primary_key"] is None
    assert entry["withheld"] == [f"primary_key: nested more than {MAX_ENTRY_DEPTH} levels deep"]
    assert entry["message"]["key"]["encoding"] == "withheld"
    orjson.dumps(entry)


def test_a_long_reason_is_truncated_and_text_utf8_cannot_carry_is_escaped():
    record = SourceRecord("t.a.b", 0, 1, None, b"{}", None)
    reason = "x" * 10 * MAX_REASON_CHARS + " lone \ud800 surrogate"
    entry = envelope(Failure(Unprocessable(reason, record), "a.b"), frozenset(), NOW_MS)
    assert len(entry["reason"]) < MAX_REASON_CHARS + 100
    assert entry["reason"].endswith(" lone \\ud800 surrogate")
    assert entry["withheld"] == [f"reason: {len(reason)} characters, truncated"]
    orjson.dumps(entry)


def test_a_field_the_encoder_refuses_is_withheld_and_the_entry_says_why():
    deep = orjson.loads(nested(ENCODER_MAX_DEPTH + 1))
    entry = writable({"id": "a", "primary_key": deep, "reason": "\ud800", "withheld": ["x"]})
    assert entry["id"] == "a"
    assert entry["primary_key"] is None and entry["reason"] is None
    assert entry["withheld"][0] == "x"
    assert [line.split(":")[0] for line in entry["withheld"][1:]] == ["primary_key", "reason"]
    orjson.dumps(entry)
