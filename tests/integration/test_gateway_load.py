"""The gateway under load at full size (1,000 clients, 20 channels), for a short while."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gateway_load  # noqa: E402


@pytest.mark.parametrize(("redis", "duration_s"), [("single", 8), ("cluster", 4)])
def test_thousand_clients_on_twenty_channels_get_every_message_once_and_stop_promptly(
    tmp_path: Path, request: pytest.FixtureRequest, redis: str, duration_s: int
) -> None:
    server = request.getfixturevalue("redis_server" if redis == "single" else "redis_cluster")
    request.getfixturevalue("redis_client" if redis == "single" else "redis_cluster_client")
    args = gateway_load.parse_args(
        [
            "--clients", "1000", "--channels", "20", "--rate", "100",
            "--duration", str(duration_s), "--redis-url", server.address(),
            "--out", str(tmp_path / "load.json"), "--no-markdown",
        ]
    )  # fmt: skip
    result = gateway_load.run(args)
    print("\n" + json.dumps(result, indent=2))
    assert result["published"] >= 90 * duration_s
    assert result["published_per_s"] >= 90  # the publisher kept its pace
    assert result["dropped_clients"] == 0
    assert (result["missing"], result["duplicates"]) == (0, 0)
    # each message reaches the 50 clients of its channel
    assert result["deliveries"] == result["expected_deliveries"] >= 50 * 90 * duration_s
    # generous: the machine is shared; the numbers go to the report, not to a pass/fail line
    assert result["latency_ms"]["p99"] < 5_000
    # On a Cluster the gateway used to keep reading after SIGTERM, until killed.
    assert result["gateway_stop"]["exit"] == 0
    assert result["gateway_stop"]["seconds"] < 10
