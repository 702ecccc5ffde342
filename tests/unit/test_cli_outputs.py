"""Every command that prints results takes ``--json``; the ones needing no server, parsed.

The commands that run until stopped print logs, not results; ``dlq show`` and ``rules
schema`` print JSON whatever is asked. Any other command without ``--json`` fails the census.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import click
import jwt
import orjson
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.stack import SERVICES, port_env

# Long-running processes (their output is a log) and the commands whose output is JSON.
WITHOUT_JSON = {"run", "watchdog", "inspect", "demo", "dlq show", "rules schema"}
SECRET = "a-gateway-secret-of-at-least-32-bytes"


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def test_every_command_that_prints_results_takes_json():
    found = dict(commands(main))
    assert {"dev status", "gateway token", "mode set", "dev up"} <= found.keys()
    lacking = [
        name
        for name, command in found.items()
        if name not in WITHOUT_JSON
        and not any("--json" in getattr(p, "opts", ()) for p in command.params)
    ]
    assert lacking == []
    assert found.keys() >= WITHOUT_JSON, "an exempt command was renamed"


def test_gateway_token_json_holds_a_token_for_its_channels_and_expiry():
    before = int(time.time())
    result = CliRunner().invoke(
        main,
        ["gateway", "token", "--secret", SECRET, "--channel", "inv:*", "--channel", "a", "--json"],
    )
    assert result.exit_code == 0, result.output
    shown = orjson.loads(result.stdout)
    assert shown["channels"] == ["inv:*", "a"]
    assert before + 3600 <= shown["expires_at"] <= int(time.time()) + 3600
    claims = jwt.decode(shown["token"], SECRET, algorithms=["HS256"])
    assert claims["channels"] == ["inv:*", "a"] and claims["exp"] == shown["expires_at"]


def test_dev_status_json_lists_each_service_and_exits_1_when_one_requested_is_down(tmp_path):
    env = {"CDC_CACHE_HOME": str(tmp_path)} | {port_env(s): str(free_port()) for s in SERVICES}
    result = CliRunner().invoke(main, ["dev", "status", "--with-postgres", "--json"], env=env)
    assert result.exit_code == 1
    shown = orjson.loads(result.stdout)
    assert shown["home"] == str(tmp_path)
    by_service = {row["service"]: row for row in shown["services"]}
    assert set(by_service) == {"redis", "broker", "mariadb", "postgres"}
    redis = by_service["redis"]
    assert redis == {
        "service": "redis",
        "state": "stopped",
        "pid": None,
        "address": f"redis://127.0.0.1:{env[port_env('redis')]}/0",
        "requested": True,
    }
