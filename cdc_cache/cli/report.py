"""What every command shares: errors as one line and an exit code, common options."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import orjson
from redis.exceptions import RedisError

from cdc_cache.core.errors import CdcCacheError, StopRequested
from cdc_cache.core.redact import redact_url

Options = Callable[[Callable[..., None]], Callable[..., None]]

REDIS_URL = click.option(
    "--redis-url",
    envvar="CDC_CACHE_REDIS_URL",
    default="redis://127.0.0.1:16379/0",
    show_default=True,
    help="The cache's Redis (?cluster=true for Redis Cluster; redis+sentinel:// for Sentinel).",
)


def _use_namespace(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from cdc_cache.core.keys import NamespaceError, use_namespace

    try:
        use_namespace(value)
    except NamespaceError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


NAMESPACE = click.option(
    "--namespace",
    envvar="CDC_CACHE_NAMESPACE",
    default="cdc",
    show_default=True,
    expose_value=False,
    is_eager=True,
    callback=_use_namespace,
    help="The worker's namespace setting: the prefix of its own Redis keys.",
)

JSON_OUTPUT = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as one JSON document (for scripts)."
)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (dataclasses, enums and dates included)."""
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


@contextmanager
def reported(command: str, redis_url: str | None = None) -> Iterator[None]:
    """Turn an error into one line on stderr and an exit code, instead of a traceback.

    3: stopped while waiting to retry (the pending batch is replayed on restart);
    2: anything to fix first (settings, rules, files, an unreachable server).
    """
    try:
        yield
    except StopRequested as exc:
        click.echo(f"{command}: {exc}", err=True)
        sys.exit(3)
    except CdcCacheError as exc:
        click.echo(f"{command}: {exc}", err=True)
        sys.exit(2)
    except RedisError as exc:
        where = redact_url(redis_url) if redis_url else "?"
        click.echo(f"{command}: Redis at {where}: {exc}; check --redis-url", err=True)
        sys.exit(2)


def with_options(command: Callable[..., None], *options: Options) -> Callable[..., None]:
    """``command`` with ``options``, listed in the order ``--help`` shows them."""
    for option in reversed(options):
        command = option(command)
    return command
