"""``cdc-cache inspect``: the cache's consistency, measured continuously."""

from __future__ import annotations

from pathlib import Path

import click

from cdc_cache.cli.report import reported


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="The worker's settings file (YAML): rules, brokers, topics, Redis are read from it.",
)
@click.option("--rules", type=click.Path(path_type=Path), help="Rules file (YAML).")
@click.option("--brokers", help="Kafka bootstrap servers, comma-separated.")
@click.option("--topic", "topics", multiple=True, help="A Debezium topic to read (repeatable).")
@click.option("--topic-pattern", help="Regex of topics to read instead of --topic.")
@click.option("--redis-url", help="The cache's Redis.")
@click.option(
    "--db",
    "inspect_db",
    help="mysql://user:pass@host:port/db or postgresql://... (or CDC_CACHE_INSPECT_DB_FILE).",
)
@click.option("--port", "inspect_port", type=int, help="Serve /, /inspect, /metrics, /readyz.")
@click.option("--sample-every", "inspect_sample_every", type=int, help="Sample 1 change in N.")
@click.option(
    "--max-samples-per-s", "inspect_max_samples_per_s", type=float, help="At most N samples a s."
)
@click.option(
    "--max-db-queries-per-s",
    "inspect_max_db_queries_per_s",
    type=float,
    help="At most N database queries a second, re-checks included.",
)
@click.option(
    "--settle-s", "inspect_settle_s", type=float, help="Seconds a change settles before its check."
)
@click.option(
    "--recheck-limit-s",
    "inspect_recheck_limit_s",
    type=float,
    help="How long a wrong key is re-checked for its time to consistency.",
)
@click.option(
    "--objective-nines",
    "inspect_objective_nines",
    type=float,
    help="The consistency objective the alert compares with.",
)
@click.option(
    "--min-checks", "inspect_min_checks", type=int, help="Checks a window needs to have nines."
)
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
def inspect(config_file: Path | None, **flags: object) -> None:
    """Measure the cache's consistency continuously, in nines, until SIGTERM/SIGINT.

    Samples changes from the Debezium topics, waits until each settled, then compares its
    row in the database with its keys in Redis (never writing to Redis). README:
    "Measuring consistency".
    """
    import threading

    from cdc_cache.app.load import load
    from cdc_cache.core import logs
    from cdc_cache.core.errors import ConfigError
    from cdc_cache.core.identity import TableIdentity
    from cdc_cache.core.keys import use_namespace
    from cdc_cache.inspector.service import run_until
    from cdc_cache.inspector.settings import InspectSettings
    from cdc_cache.plan.rules_loader import load_rules

    with reported("cdc-cache inspect", str(flags.get("redis_url") or "")):
        settings = load(InspectSettings, config_file, **flags)
        use_namespace(settings.namespace)
        if settings.table_identity is TableIdentity.SERVER_DB_TABLE:
            msg = (
                "table_identity: server_db_table: inspect reads one database and cannot tell "
                "which server's tables it holds; check each source with "
                "cdc-cache verify --server <topic.prefix> --db <its database>"
            )
            raise ConfigError(msg)
        logs.configure(settings.log_level)
        run_until(settings, load_rules(settings.rules), threading.Event())
