"""The gateway under load at full size (1,000 clients, 20 channels), for a short while."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cdc_cache.tools.devstack.redis import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gateway_load  # noqa: E402


def test_thousand_clients_on_twenty_channels_get_every_message_once(
    tmp_path: Path, redis_server: RedisServer, redis_client: object
) -> None:
    args = gateway_load.parse_args(
        [
            "--clients", "1000", "--channels", "20", "--rate", "100", "--duration", "8",
            "--redis-url", redis_server.address(), "--out", str(tmp_path / "load.json"),
            "--no-markdown",
        ]
    )  # fmt: skip
    result = gateway_load.run(args)
    print("\n" + json.dumps(result, indent=2))
    assert result["published"] >= 700
    assert result["published_per_s"] >= 90  # the publisher kept its pace
    assert result["dropped_clients"] == 0
    assert (result["missing"], result["duplicates"]) == (0, 0)
    assert result["deliveries"] == result["expected_deliveries"] >= 35_000
    # generous: the machine is shared; the numbers go to the report, not to a pass/fail line
    assert result["latency_ms"]["p99"] < 5_000
