"""The mode keys read strictly: junk is named with its key, field and fix."""

from __future__ import annotations

import orjson
import pytest

from cdc_cache.core.keys import ns
from cdc_cache.mode.controller import Cause, Flag, Mode
from cdc_cache.mode.record import ModeKeyError, ModeRecord, parse_flag
from cdc_cache.sink.connection import redis_url_problem

PUBLISHED = {"mode": "ttl", "flag": "auto", "cause": "lag", "reason": "lag 90 s",
             "since_ms": "1700000000000", "lag_s": "90.000"}  # fmt: skip


def test_a_published_record_parses():
    record = ModeRecord.parse(PUBLISHED)
    assert record == ModeRecord(Mode.TTL, Flag.AUTO, Cause.LAG, "lag 90 s", 1700000000000, "90.000")
    assert ModeRecord.parse({}) is None


@pytest.mark.parametrize(
    ("field", "junk"),
    [("mode", "fast"), ("flag", "sometimes"), ("cause", "moon"), ("since_ms", "yesterday"),
     ("since_ms", "-1"), ("since_ms", "١٢")],
)  # fmt: skip
def test_junk_in_a_field_names_the_key_the_field_and_the_fix(field, junk):
    with pytest.raises(ModeKeyError, match=rf"^{ns().mode} field {field} holds {junk!r}") as err:
        ModeRecord.parse({**PUBLISHED, field: junk})
    assert "DEL" in str(err.value) or "cdc-cache mode set" in str(err.value)


def test_the_tables_in_ttl_alone_are_read_and_junk_there_is_named():
    tables = {"db.items": "the rules use column 'price'"}
    record = ModeRecord.parse({**PUBLISHED, "tables": orjson.dumps(tables).decode()})
    assert record is not None and record.tables == tables
    for junk in ("[1]", "{not json", '{"db.items": 5}'):
        with pytest.raises(ModeKeyError, match=rf"^{ns().mode} field tables holds .*DEL"):
            ModeRecord.parse({**PUBLISHED, "tables": junk})


def test_the_flag_absent_is_auto_and_junk_is_refused():
    assert parse_flag(None) is Flag.AUTO
    assert parse_flag(b" TTL\n") is Flag.TTL
    with pytest.raises(ModeKeyError, match=rf"^{ns().mode_flag} holds 'maybe'.*mode set"):
        parse_flag(b"maybe")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://cache:6379/0", None),
        ("rediss://cache:6380/0?ssl_ca_certs=/ca.pem&cluster=true", None),
        ("unix:///run/redis.sock", None),
        ("http://user:pw@cache:6379", "has the scheme 'http'"),
        ("cache:6379", "has the scheme 'cache'"),
        ("/tmp/x", "has the scheme '(none)'"),
        ("redis://cache:6379/0?cluster=maybe", "cluster= must be true or false"),
    ],
)
def test_a_redis_url_is_checked_with_the_settings(url, problem):
    found = redis_url_problem(url)
    assert (found is None) == (problem is None), found
    if problem is not None:
        assert problem in found and "pw" not in found  # type: ignore[operator]
