"""The reject path: every failure becomes one entry, and no entry or log line leaks values."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from cdc_cache.core.errors import DecodeError
from cdc_cache.core.events import SourceRecord
from cdc_cache.core.keys import escape_value
from cdc_cache.core.logs import JsonFormatter
from cdc_cache.dlq import rejects
from cdc_cache.dlq.entries import Failure, public_reason
from cdc_cache.dlq.rejects import Rejects
from cdc_cache.plan.invalidations import Invalidated, KeyOutcome
from cdc_cache.plan.route import Rejected, route
from cdc_cache.plan.rules_loader import parse_rules
from tests.hostile import KeptDeadLetters, nested

USERS_RULES = parse_rules("""
tables:
  app.users:
    sensitive: [email]
    keys:
      - key: "user:{email}"
        fields: [id, email, bio]
""")
EMAIL = "ann+x@example.com"  # escaped in keys as ann%2Bx@example.com


def users_change(**after: object) -> SourceRecord:
    value = {
        "op": "c",
        "before": None,
        "after": {"id": 7, "email": EMAIL, "bio": "", **after},
        "source": {"connector": "mysql", "db": "app", "table": "users", "file": "b.000001",
                   "pos": 4, "row": 0, "ts_ms": 1},
    }  # fmt: skip
    return SourceRecord("s.app.users", 0, 3, orjson.dumps({"id": 7}), orjson.dumps(value))


def leaks(text: str) -> list[str]:
    return [form for form in (EMAIL, escape_value(EMAIL), "ann+x", "ann%2Bx") if form in text]


def test_sensitive_values_stay_out_of_reasons_stacks_and_error_log_lines(caplog):
    routed = route(users_change(bio="x" * 500), USERS_RULES, max_value_bytes=100)
    assert isinstance(routed, Rejected) and routed.error.kind == "value_too_large"
    assert leaks(routed.error.reason)  # the reason quotes the rendered key, email and all
    kept = KeptDeadLetters()

    with caplog.at_level(logging.ERROR, logger="cdc_cache.rejects"):
        Rejects(USERS_RULES, kept).report([Failure(routed.error, routed.table, routed.event)])

    (entry,) = kept.entries
    assert leaks(orjson.dumps(entry).decode()) == []
    assert "user:***redacted***" in entry["reason"] and "user:***redacted***" in entry["stack"]
    (line,) = [JsonFormatter().format(r) for r in caplog.records if r.levelno >= logging.ERROR]
    assert leaks(line) == [] and "user:***redacted***" in line


def test_a_replay_outcome_shows_the_reason_as_scrubbed_as_the_entry():
    routed = route(users_change(bio="x" * 500), USERS_RULES, max_value_bytes=100)
    assert isinstance(routed, Rejected)
    failure = Failure(routed.error, routed.table, routed.event)
    shown = public_reason(failure, USERS_RULES.sensitive(routed.table))
    assert leaks(shown) == [] and "user:***redacted***" in shown


def test_an_entry_that_cannot_be_built_is_written_with_its_coordinates(monkeypatch):
    record = SourceRecord("s.app.users", 2, 9, None, b"{bad", None)
    error = DecodeError("not JSON", record)

    def broken(*args: object) -> dict[str, Any]:
        raise MemoryError

    monkeypatch.setattr(rejects, "envelope", broken)
    kept = KeptDeadLetters()
    Rejects(USERS_RULES, kept).report([Failure(error, "app.users")])

    (entry,) = kept.entries
    assert entry["kind"] == "undecodable" and entry["table"] == "app.users"
    assert entry["source"] == {"topic": "s.app.users", "partition": 2, "offset": 9}
    assert entry["message"] is None
    assert entry["withheld"] == ["all but the coordinates: building the entry raised MemoryError"]


def test_an_entry_built_from_its_coordinates_still_says_what_became_of_the_keys(monkeypatch):
    routed = route(users_change(bio="x" * 500), USERS_RULES, max_value_bytes=100)
    assert isinstance(routed, Rejected) and len(routed.invalidation.deletes) == 1
    invalidated = Invalidated.of(routed.invalidation, [KeyOutcome.DELETED])

    def broken(*args: object) -> dict[str, Any]:
        raise MemoryError

    monkeypatch.setattr(rejects, "envelope", broken)
    kept = KeptDeadLetters()
    failure = Failure(routed.error, routed.table, routed.event, invalidated)
    Rejects(USERS_RULES, kept).report([failure])

    (entry,) = kept.entries
    assert entry["invalidation"]["deleted"] == 1 and entry["invalidation"]["unreached"] == 0
    assert leaks(orjson.dumps(entry).decode()) == []


@pytest.mark.parametrize("depth", [300, 1000])
def test_a_deep_poison_message_becomes_one_written_entry(depth):
    raw = b'{"op": "c", "source": ' + nested(depth) + b"}"
    record = SourceRecord("s.app.users", 0, 5, b'{"email": ' + nested(depth) + b"}", raw)
    routed = route(record, USERS_RULES)
    assert isinstance(routed, Rejected)
    kept = KeptDeadLetters()
    Rejects(USERS_RULES, kept).report([Failure(routed.error, routed.table, routed.event)])
    (entry,) = kept.entries
    assert entry["kind"] == "undecodable"
    assert entry["message"]["value"]["encoding"] == "withheld"  # sensitive table, too deep
    assert entry["primary_key"] is None


def test_a_log_line_is_written_whatever_its_fields_hold():
    deep = orjson.loads(nested(1000))
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "bad \ud800", None, None)
    record.__dict__.update({"reason": "lone \ud800", "row": deep, "count": 3})
    line = orjson.loads(JsonFormatter().format(record))
    assert line["msg"] == "bad \\ud800" and line["reason"] == "lone \\ud800"
    assert line["count"] == 3 and line["row"] == "<list nested too deeply to show>"
