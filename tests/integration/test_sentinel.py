"""Sentinel URLs on real servers: the commands and the gateway's client find the primary,
and find the new one after a failover."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.keys import ns
from cdc_cache.sink.sentinel import connect_async

pytestmark = pytest.mark.integration


def mode(*args: str) -> str:
    result = CliRunner().invoke(main, ["mode", *args])
    assert result.exit_code == 0, result.output
    return result.output


async def round_trip(url: str) -> bytes | None:
    client = connect_async(url)
    try:
        await client.set("gateway:probe", b"seen")
        return await client.get("gateway:probe")
    finally:
        await client.aclose()


def test_commands_and_the_gateway_client_follow_the_primary_through_a_failover(
    replicated_redis,
):
    group = replicated_redis
    url = group.url()
    mode("set", "ttl", "--redis-url", url)
    assert group.client(group.primary).get(ns().mode_flag) == b"ttl"
    assert "flag:   ttl" in mode("get", "--redis-url", url)
    assert asyncio.run(round_trip(url)) == b"seen"

    group.fail_over()
    mode("set", "cdc", "--redis-url", url)
    assert group.client(group.primary).get(ns().mode_flag) == b"cdc"
    assert asyncio.run(round_trip(url)) == b"seen"
