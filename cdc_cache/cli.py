"""The ``cdc-cache`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cdc_cache import __version__
from cdc_cache.devstack.cli import dev
from cdc_cache.errors import ConfigError, StopRequested


@click.group()
@click.version_option(__version__, prog_name="cdc-cache")
def main() -> None:
    """cdc-cache: Debezium change events to version-gated Redis cache operations."""


main.add_command(dev)


@main.command()
@click.option("--rules", type=click.Path(path_type=Path), help="Rules file (YAML).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="Settings file (YAML); flags and CDC_CACHE_* variables override it.",
)
@click.option("--brokers", help="Kafka bootstrap servers, comma-separated.")
@click.option("--topic", "topics", multiple=True, help="A Debezium topic to read (repeatable).")
@click.option("--topic-pattern", help="Regex of topics to read instead of --topic.")
@click.option("--redis-url", help="redis://, rediss://, or a cluster URL (see README).")
@click.option(
    "--recovery-dir",
    type=click.Path(path_type=Path),
    help="Where Bytewax keeps offsets snapshots between restarts.",
)
@click.option("--workers", type=int, help="Worker threads in this process.")
@click.option("--process-id", type=int, help="This process's index in a multi-process cluster.")
@click.option(
    "--address",
    "addresses",
    multiple=True,
    help="host:port of every process of the cluster, in order (repeatable).",
)
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port.")
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
def run(config_file: Path | None, **flags: object) -> None:
    """Run the invalidation worker until SIGTERM/SIGINT."""
    from cdc_cache import logs
    from cdc_cache.settings import load_settings
    from cdc_cache.worker import run as run_worker

    try:
        settings = load_settings(config_file, **flags)
        logs.configure(settings.log_level)
        run_worker(settings)
    except ConfigError as exc:
        click.echo(f"cdc-cache: {exc}", err=True)
        sys.exit(2)
    except StopRequested as exc:
        click.echo(f"cdc-cache: {exc}", err=True)
        sys.exit(3)
