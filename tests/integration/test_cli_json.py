"""--json on the commands that read Redis: one JSON document on stdout, nothing else."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
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
