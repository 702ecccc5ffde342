"""``cdc-cache run`` and ``cdc-cache watchdog``: the long-running processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cdc_cache.cli.report import reported

EXIT_CODES = (
    ("0", "stopped by SIGTERM or SIGINT, every applied batch snapshotted"),
    ("1", "an unexpected error (the log has its stack); restart: it resumes from recovery"),
    ("2", "something to fix first: a setting, the rules, a file, credentials (named)"),
    ("3", "stopped while waiting to retry a server; the pending batch replays on restart"),
)


class SettingsHelp(click.Command):
    """A command whose ``--help`` ends with every setting and the exit codes.

    Each setting with its environment variable, meaning and default: what an operator
    needs without the README at hand.
    """

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from pydantic import BaseModel

        from cdc_cache.app.settings import ENV_PREFIX, WorkerSettings
        from cdc_cache.dlq.topic import PRODUCER_DEFAULTS
        from cdc_cache.source.kafka_config import CONSUMER_DEFAULTS

        # librdkafka maps whose defaults the clients apply under what is given
        applied = {"kafka_consumer": CONSUMER_DEFAULTS, "kafka_producer": PRODUCER_DEFAULTS}
        rows = []
        for name, field in WorkerSettings.model_fields.items():
            value = None if field.is_required() else field.get_default(call_default_factory=True)
            value = value or applied.get(name)
            if isinstance(value, BaseModel):
                value = value.model_dump()
            unset = value is None or value in ({}, [])
            default = "required" if field.is_required() else "unset" if unset else str(value)
            rows.append((name, f"{ENV_PREFIX}{name.upper()}; {field.description} [{default}]"))
        title = "Settings (flags > environment > the --config file; lists and maps as JSON)"
        with formatter.section(title):
            formatter.write_dl(rows)
        with formatter.section("Exit codes"):
            formatter.write_dl(EXIT_CODES)


@click.command(cls=SettingsHelp)
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
@click.option(
    "--redis-url", help="redis://, rediss://, redis+sentinel://, or a cluster URL (see README)."
)
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
@click.option(
    "--metrics-port", type=int, help="Serve the admin API (/metrics, /readyz, /mode) on this port."
)
@click.option("--dlq-topic", help="Topic for messages that cannot be processed.")
@click.option(
    "--max-value-bytes", type=int, help="Largest projected value written; larger is dead-lettered."
)
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
def run(config_file: Path | None, **flags: object) -> None:
    """Run the invalidation worker until SIGTERM/SIGINT."""
    from cdc_cache.app.load import load_settings
    from cdc_cache.app.worker import run as run_worker
    from cdc_cache.core import logs
    from cdc_cache.core.keys import use_namespace

    with reported("cdc-cache"):
        settings = load_settings(config_file, **flags)
        use_namespace(settings.namespace)
        logs.configure(settings.log_level)
        run_worker(settings)


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="The worker's settings file (YAML); its Redis settings are used, other keys ignored.",
)
@click.option("--redis-url", help="The cache's Redis (add ?cluster=true for Redis Cluster).")
@click.option(
    "--down-after-s",
    "watchdog_down_after_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Heartbeat silence that means the worker is down (default: the worker's "
    "lag_slo_s + mode_window_s, which it publishes).",
)
@click.option(
    "--port",
    "watchdog_port",
    type=int,
    help="Serve /metrics, /healthz, /readyz and GET /mode on this port.",
)
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
def watchdog(config_file: Path | None, **flags: Any) -> None:
    """Fall the cache back to ttl mode while no worker is alive (a dead-man's switch).

    Safe to run several: one holds a lock in Redis and acts, the others stand by.
    """
    from cdc_cache.app.load import load
    from cdc_cache.app.settings import WatchdogSettings
    from cdc_cache.app.watchdog import serve
    from cdc_cache.core import logs
    from cdc_cache.core.keys import use_namespace

    with reported("cdc-cache watchdog", flags.get("redis_url")):
        settings = load(WatchdogSettings, config_file, **flags)
        use_namespace(settings.namespace)
        logs.configure(settings.log_level)
        serve(settings)
