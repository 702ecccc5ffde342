"""``cdc-cache gateway``: live notifications, and the tokens of their clients."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from cdc_cache.cli.report import JSON_OUTPUT, echo_json, reported, with_options
from cdc_cache.core.errors import ConfigError


def _gateway_secret_options(command: Callable[..., None]) -> Callable[..., None]:
    """--config, --secret and --secret-file: what both gateway commands need."""
    return with_options(
        command,
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="Settings file (YAML); flags and CDC_CACHE_GATEWAY_* variables override it.",
        ),
        click.option("--secret", help="HMAC key of client tokens (prefer --secret-file)."),
        click.option(
            "--secret-file", type=click.Path(path_type=Path), help="File holding the HMAC key."
        ),
    )


@click.group(invoke_without_command=True)
@_gateway_secret_options
@click.option("--redis-url", help="The Redis the worker writes notifications to.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port for WebSocket (/ws), /, /healthz and /metrics.")
@click.option("--queue-size", type=int, help="Messages queued per client before it is dropped.")
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
@click.pass_context
def gateway(ctx: click.Context, /, config_file: Path | None, **flags: object) -> None:
    """Serve live notifications over WebSocket until SIGTERM/SIGINT."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from cdc_cache.app.load import load
    from cdc_cache.core import logs
    from cdc_cache.core.keys import use_namespace
    from cdc_cache.notify.gateway import serve_until_stopped
    from cdc_cache.notify.settings import GatewaySettings

    with reported("cdc-cache gateway", str(flags.get("redis_url"))):
        settings = load(GatewaySettings, config_file, **flags)
        use_namespace(settings.namespace)
        settings.signing_key()  # an unreadable secret file stops startup, not the first client
        logs.configure(settings.log_level)
        asyncio.run(serve_until_stopped(settings))


@gateway.command("token")
@_gateway_secret_options
@click.option(
    "--channel",
    "channels",
    multiple=True,
    required=True,
    help="A channel pattern the client may read, '*' for any characters (repeatable).",
)
@click.option("--ttl-s", type=click.IntRange(min=1), default=3600, show_default=True)
@JSON_OUTPUT
def gateway_token(
    config_file: Path | None,
    channels: tuple[str, ...],
    ttl_s: int,
    as_json: bool,
    **flags: object,
) -> None:
    """Print a client token granting the given channel patterns.

    With --json: the token, its channels and when it expires (Unix seconds).
    """
    import time

    from cdc_cache.app.load import load
    from cdc_cache.notify.settings import GatewaySettings
    from cdc_cache.notify.tokens import TokenError, issue

    with reported("cdc-cache gateway token"):
        settings = load(GatewaySettings, config_file, **flags)
        expires_at = int(time.time()) + ttl_s
        try:
            token = issue(settings.signing_key(), channels, expires_at)
        except TokenError as exc:
            raise ConfigError(str(exc)) from exc
    if as_json:
        echo_json({"token": token, "channels": list(channels), "expires_at": expires_at})
        return
    click.echo(token)
