"""--json on the commands that read Redis: one JSON document on stdout, nothing else."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.continuity.model import Discontinuity, Kind, Observed, SourceState
from cdc_cache.continuity.store import ContinuityStore
from cdc_cache.core.keys import ns

pytestmark = pytest.mark.integration


def json_of(*args: str) -> object:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def test_mode_get_json_holds_the_flag_and_the_published_mode(redis_server, redis_client):
    url = ["--redis-url", redis_server.address()]
    assert json_of("mode", "get", *url) == {"flag": "auto", "mode": None}
    CliRunner().invoke(main, ["mode", "set", "ttl", *url])
    redis_client.hset(
        ns().mode,
        mapping={"mode": "ttl", "flag": "ttl", "cause": "forced", "reason": "forced",
                 "since_ms": "1700000000000", "lag_s": "3.5"},
    )  # fmt: skip
    shown = json_of("mode", "get", *url)
    assert shown["flag"] == "ttl"
    assert shown["mode"]["mode"] == "ttl" and shown["mode"]["cause"] == "forced"
    assert shown["mode"]["since_ms"] == 1_700_000_000_000 and shown["mode"]["lag_s"] == "3.5"


def test_continuity_status_json_is_the_records_by_partition(redis_server, redis_client):
    assert json_of("continuity", "status", "--redis-url", redis_server.address()) == {}


def test_mode_set_json_holds_the_flag_now_stored(redis_server):
    url = ["--redis-url", redis_server.address()]
    assert json_of("mode", "set", "ttl", *url) == {"flag": "ttl"}
    assert json_of("mode", "get", *url)["flag"] == "ttl"


def test_continuity_decisions_in_json_name_each_partition_and_its_reason(
    redis_server, redis_client
):
    store = ContinuityStore(redis_client)
    for partition, kind in ((0, Kind.TOPIC_RECREATED), (1, Kind.BELOW_LOG_START)):
        found = Discontinuity(
            kind, "db.inv.stock", partition, SourceState(7, "old"), Observed("new")
        )
        store.report(found, "held", 1_700_000_000_000)
    url = ["--topic", "db.inv.stock", "--redis-url", redis_server.address()]
    reread = json_of("continuity", "reread", "--partition", "0", *url)
    assert list(reread) == ["action", "partitions"] and reread["action"] == "reread"
    assert list(reread["partitions"]) == ["db.inv.stock[0]"]
    assert "deleted or recreated" in reread["partitions"]["db.inv.stock[0]"]
    accepted = json_of("continuity", "accept", "--yes", *url)
    assert accepted["action"] == "accept"
    assert sorted(accepted["partitions"]) == ["db.inv.stock[0]", "db.inv.stock[1]"]
    assert store.decision("db.inv.stock[1]") == (
        accepted["action"],
        store.records()["db.inv.stock[1]"]["key"],
    )
