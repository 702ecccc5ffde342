"""The ``cdc-cache`` command line."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import click
from redis.exceptions import RedisError

from cdc_cache import __version__
from cdc_cache.core.errors import POISON_KINDS, CdcCacheError, ConfigError, StopRequested
from cdc_cache.core.redact import redact_url
from cdc_cache.tools.devstack.cli import dev


@click.group()
@click.version_option(__version__, prog_name="cdc-cache")
def main() -> None:
    """cdc-cache: Debezium change events to version-gated Redis cache operations."""


main.add_command(dev)


@contextmanager
def _reported(command: str, redis_url: str | None = None) -> Iterator[None]:
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
    from cdc_cache.app.settings import load_settings
    from cdc_cache.app.worker import run as run_worker
    from cdc_cache.core import logs

    with _reported("cdc-cache"):
        settings = load_settings(config_file, **flags)
        logs.configure(settings.log_level)
        run_worker(settings)


@main.command()
@click.option(
    "--db", "dsn", required=True, help="mysql://user:pass@host:port/db or postgresql://..."
)
@click.option("--rules", type=click.Path(path_type=Path), required=True, help="Rules file (YAML).")
@click.option(
    "--redis-url", required=True, help="redis://, rediss://, redis+sentinel://, or a cluster URL."
)
@click.option("--sample", type=int, help="Check N random rows of tables larger than N.")
@click.option("--table", "tables", multiple=True, help="Check only this table (repeatable).")
@click.option(
    "--settle",
    "settle_retries",
    type=int,
    default=3,
    show_default=True,
    help="Re-checks of a difference (a change in flight) before it is reported.",
)
@click.option(
    "--settle-delay",
    "settle_delay_s",
    type=float,
    default=0.5,
    show_default=True,
    help="Seconds between re-checks.",
)
def verify(dsn: str, rules: Path, redis_url: str, **options: Any) -> None:
    """Compare the cache with the database; exit 1 on stale or unexpected keys."""
    from cdc_cache.plan.rules import load_rules
    from cdc_cache.sink.apply import connect
    from cdc_cache.tools.verify import verify as run_verify

    with _reported("cdc-cache verify", redis_url):
        client = connect(redis_url)
        report = run_verify(dsn, load_rules(rules), client, **options)
    click.echo(report.format())
    sys.exit(report.exit_code)


@main.command()
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

    from cdc_cache.app.settings import InspectSettings, load
    from cdc_cache.core import logs
    from cdc_cache.inspector.service import run_until
    from cdc_cache.plan.rules import load_rules

    with _reported("cdc-cache inspect", str(flags.get("redis_url") or "")):
        settings = load(InspectSettings, config_file, **flags)
        logs.configure(settings.log_level)
        run_until(settings, load_rules(settings.rules), threading.Event())


@main.command()
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1, max=1000),
    default=30.0,
    show_default=True,
    help="Transactions per second written to MariaDB.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave Redis, the broker, MariaDB and Debezium up afterwards (cdc-cache dev down).",
)
def demo(rate: float, duration: float | None, keep_running: bool) -> None:
    """Run the local stack, the worker and a write load, and show the cache keeping up.

    Exits 1 if, after draining, a stock row's cache key is stale or a key has no row.
    """
    from cdc_cache.tools.demo import DemoOptions, run_demo
    from cdc_cache.tools.devstack.process import StackError

    try:
        code = run_demo(DemoOptions(rate=rate, duration=duration, keep_running=keep_running))
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@main.group()
def mode() -> None:
    """Read or force the cache mode (cdc: invalidations; ttl: short TTLs while lagging)."""


_REDIS_URL = click.option(
    "--redis-url",
    envvar="CDC_CACHE_REDIS_URL",
    default="redis://127.0.0.1:16379/0",
    show_default=True,
    help="The cache's Redis (?cluster=true for Redis Cluster; redis+sentinel:// for Sentinel).",
)


@mode.command("get")
@_REDIS_URL
def mode_get(redis_url: str) -> None:
    """Print the operator flag and the effective mode with its reason and since when."""
    import time

    from cdc_cache.fallback.runtime import ModeStore
    from cdc_cache.mode.record import ModeRecord
    from cdc_cache.sink.apply import connect

    with _reported("cdc-cache mode get", redis_url):
        store = ModeStore(connect(redis_url))
        try:
            flag = store.flag().value
        except ConfigError as exc:
            flag = f"invalid ({exc})"
        record = ModeRecord.parse(store.record())
    click.echo(f"flag:   {flag}")
    if record is None:
        click.echo("mode:   unknown (no worker has published a mode yet)")
        return
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.since_ms / 1000))
    click.echo(f"mode:   {record.mode.value}")
    click.echo(f"reason: {record.reason} ({record.cause.value})")
    click.echo(f"since:  {since} ({record.since_ms})")
    click.echo(f"lag_s:  {record.lag_s or 'unknown'}")
    click.echo(f"writer: {record.writer}")


@mode.command("set")
@click.argument("flag", type=click.Choice(["auto", "cdc", "ttl"]))
@_REDIS_URL
def mode_set(flag: str, redis_url: str) -> None:
    """Set the operator flag: auto follows the lag, cdc or ttl force that mode."""
    from cdc_cache.fallback.runtime import ModeStore
    from cdc_cache.mode.controller import Flag
    from cdc_cache.sink.apply import connect

    with _reported("cdc-cache mode set", redis_url):
        ModeStore(connect(redis_url)).set_flag(Flag(flag))
    click.echo(f"flag set to {flag}; workers apply it within a second")


@main.group()
def continuity() -> None:
    """Source discontinuities (a recreated topic, records removed before they were read).

    The worker pauses such a partition and holds the cache in ttl mode until one of these
    decides how it goes on (README: Source continuity).
    """


_TOPIC = click.option("--topic", required=True, help="The topic whose partitions to resolve.")
_PARTITION = click.option("--partition", type=int, help="Only this partition (default: all).")


@continuity.command("status")
@_REDIS_URL
def continuity_status(redis_url: str) -> None:
    """Print each held partition: what broke, both offsets and topic ids, ways forward."""
    from cdc_cache.cli.continuity import status_lines
    from cdc_cache.continuity.store import ContinuityStore
    from cdc_cache.sink.apply import connect

    with _reported("cdc-cache continuity status", redis_url):
        records = ContinuityStore(connect(redis_url)).records()
    for line in status_lines(records):
        click.echo(line)


@continuity.command("reread")
@_TOPIC
@_PARTITION
@_REDIS_URL
def continuity_reread(topic: str, partition: int | None, redis_url: str) -> None:
    """Read the topic again from its start (versions make it idempotent).

    The cache stays in ttl mode until the re-read has caught up with the topic's end.
    Refused where records were removed unread: re-reading cannot bring them back.
    """
    _continuity_decide("reread", topic, partition, redis_url)


@continuity.command("accept")
@_TOPIC
@_PARTITION
@_REDIS_URL
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def continuity_accept(topic: str, partition: int | None, redis_url: str, yes: bool) -> None:
    """Accept the gap: go on from the topic's start and leave ttl mode now.

    Changes the topic no longer holds are not applied: use this after a re-snapshot of
    the affected tables, or when the cache may keep what it missed until its TTLs.
    """
    _continuity_decide("accept", topic, partition, redis_url, confirmed=yes)


def _continuity_decide(
    action: str, topic: str, partition: int | None, redis_url: str, *, confirmed: bool = True
) -> None:
    from cdc_cache.cli.continuity import chosen, decide
    from cdc_cache.continuity.model import Action
    from cdc_cache.continuity.store import ContinuityStore
    from cdc_cache.sink.apply import connect

    command = f"cdc-cache continuity {action}"
    with _reported(command, redis_url):
        store = ContinuityStore(connect(redis_url))
        picked = chosen(store.records(), topic, partition, Action(action))
        for where, record in sorted(picked.items()):
            click.echo(f"{where}: {record['reason']}")
        if not confirmed:
            click.confirm(
                f"Changes missing from {', '.join(sorted(picked))} will not be applied. Accept?",
                abort=True,
            )
        decide(store, picked, Action(action))
    click.echo(f"{action} recorded for {', '.join(sorted(picked))}; workers act within a second")


@main.group()
def connectors() -> None:
    """Apply the Debezium connector files to Kafka Connect and report whether they run."""


def _connector_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option(
            "--url",
            envvar="CDC_CACHE_CONNECT_URL",
            default="http://127.0.0.1:8083",
            show_default=True,
            help="Kafka Connect's REST API.",
        ),
        click.option(
            "--dir",
            "directory",
            type=click.Path(path_type=Path, file_okay=False),
            default=Path("connectors"),
            show_default=True,
            help="Directory of <connector name>.json config maps.",
        ),
        click.option(
            "--only", metavar="NAME", multiple=True, help="Only this connector (repeatable)."
        ),
        click.option(
            "--wait",
            "wait_s",
            metavar="SECONDS",
            type=click.FloatRange(min=0),
            default=0.0,
            help="Wait up to SECONDS for every connector and task to be RUNNING.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_connectors(command: Literal["apply", "status"], **options: Any) -> None:
    from cdc_cache.tools.connectors import run as run_connectors

    with _reported(f"cdc-cache connectors {command}"):
        code = run_connectors(
            command, out=click.echo, err=lambda line: click.echo(line, err=True), **options
        )
    sys.exit(code)


@connectors.command("apply")
@_connector_options
def connectors_apply(**options: Any) -> None:
    """PUT each file's config where Kafka Connect's differs, then report the status.

    ${env:VAR} placeholders are filled from this environment; ${file:...} and other
    config providers are left to Kafka Connect. Exit 1 if anything FAILED or is missing
    (or, with --wait, is not RUNNING in time); 2 if a file is invalid or Kafka Connect
    refuses a request or cannot be reached.
    """
    _run_connectors("apply", **options)


@connectors.command("status")
@_connector_options
def connectors_status(**options: Any) -> None:
    """Report each connector's and task's state, with the trace of what FAILED.

    Exit 1 if anything FAILED or is missing (or, with --wait, is not RUNNING in time).
    """
    _run_connectors("status", **options)


@main.group()
def dlq() -> None:
    """List, inspect and replay dead letters (messages the worker set aside).

    Reads the worker's settings (--config, CDC_CACHE_* variables, or the flags below) for
    the rules, brokers, Redis, DLQ topic and source epoch.
    """


def _dlq_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="The worker's settings file (YAML).",
        ),
        click.option("--rules", type=click.Path(path_type=Path), help="Rules file (YAML)."),
        click.option("--brokers", help="Kafka bootstrap servers, comma-separated."),
        click.option("--redis-url", help="The cache's Redis."),
        click.option("--dlq-topic", help="The dead-letter topic (default cdc-cache.dlq)."),
        click.option("--table", help="Only entries of this table (<db>.<table>)."),
        click.option(
            "--kind",
            type=click.Choice(list(POISON_KINDS)),
            help="Only entries of this kind.",
        ),
        click.option("--since", help="Only entries that failed at or after this ISO 8601 time."),
        click.option("--until", help="Only entries that failed at or before this ISO 8601 time."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _dlq_service(config_file: Path | None, flags: dict[str, Any]) -> tuple[Any, Any]:
    """The DlqService for these settings and the EntryFilter of the filter flags."""
    from cdc_cache.app.replay import DlqService
    from cdc_cache.app.settings import SharedSettings, load
    from cdc_cache.dlq.entries import entry_filter
    from cdc_cache.plan.rules import load_rules

    try:
        where = entry_filter(*(flags.pop(name) for name in ("table", "kind", "since", "until")))
    except ValueError as exc:
        msg = f"--{exc}"
        raise ConfigError(msg) from exc
    settings = load(SharedSettings, config_file, **flags)
    return DlqService(settings, load_rules(settings.rules)), where


@dlq.command("list")
@_dlq_options
def dlq_list(config_file: Path | None, **flags: Any) -> None:
    """One line per entry: id, failed at, kind, table, source, last replay, reason."""
    with _reported("cdc-cache dlq list", flags.get("redis_url")):
        service, where = _dlq_service(config_file, flags)
        entries = service.entries(where)
    for entry in entries:
        source = entry["source"]
        outcome = entry.get("outcome")
        replayed = f"{outcome['outcome']}@{outcome['at']}" if outcome else "not-replayed"
        click.echo(
            f"{entry['id']}  {entry['failed_at']}  {entry['kind']:<15} {entry['table']}  "
            f"{source['topic']}[{source['partition']}]@{source['offset']}  {replayed}  "
            f"{entry['reason']}"
        )
    click.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}", err=True)


@dlq.command("show")
@click.argument("entry_id")
@_dlq_options
def dlq_show(entry_id: str, config_file: Path | None, **flags: Any) -> None:
    """Print one entry as JSON (message, stack, source offsets, last replay)."""
    import orjson

    with _reported("cdc-cache dlq show", flags.get("redis_url")):
        service, _ = _dlq_service(config_file, flags)
        entry = service.entry(entry_id)
    if entry is None:
        click.echo(f"cdc-cache dlq show: no entry {entry_id!r}", err=True)
        sys.exit(1)
    click.echo(orjson.dumps(entry, option=orjson.OPT_INDENT_2).decode())


@dlq.command("replay")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry the filters match.")
@_dlq_options
def dlq_replay(
    entry_ids: tuple[str, ...], replay_all: bool, config_file: Path | None, **flags: Any
) -> None:
    """Replay entries by id, or every entry matching the filters with --all.

    Each message is read again from its source topic and goes through decode, plan and
    the version-gated apply; a replayed or outdated change changes nothing. Exit 1 if
    an entry is unknown or a replay failed.
    """
    from dataclasses import replace

    if bool(entry_ids) == replay_all:
        msg = "give entry ids, or --all (with optional filters), not both"
        raise click.UsageError(msg)
    with _reported("cdc-cache dlq replay", flags.get("redis_url")):
        service, where = _dlq_service(config_file, flags)
        if entry_ids:
            where = replace(where, ids=frozenset(entry_ids))
        entries = service.entries(where)
        outcomes = service.replay(entries)
    for outcome in outcomes:
        click.echo(f"{outcome.id}  {outcome.outcome}  {outcome.detail}")
    missing = sorted(set(entry_ids) - {entry["id"] for entry in entries})
    for entry_id in missing:
        click.echo(f"{entry_id}  unknown (no such entry)", err=True)
    sys.exit(1 if missing or any(o.outcome == "failed" for o in outcomes) else 0)


@main.command()
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
    from cdc_cache.app.settings import WatchdogSettings, load
    from cdc_cache.core import logs
    from cdc_cache.fallback.watchdog import serve

    with _reported("cdc-cache watchdog", flags.get("redis_url")):
        settings = load(WatchdogSettings, config_file, **flags)
        logs.configure(settings.log_level)
        serve(settings)


def _gateway_secret_options(command: Callable[..., None]) -> Callable[..., None]:
    """--config, --secret and --secret-file: what both gateway commands need."""
    options = [
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
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.group(invoke_without_command=True)
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

    from cdc_cache.app.settings import GatewaySettings, load
    from cdc_cache.core import logs
    from cdc_cache.notify.gateway import serve_until_stopped

    with _reported("cdc-cache gateway", str(flags.get("redis_url"))):
        settings = load(GatewaySettings, config_file, **flags)
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
def gateway_token(
    config_file: Path | None, channels: tuple[str, ...], ttl_s: int, **flags: object
) -> None:
    """Print a client token granting the given channel patterns."""
    import time

    from cdc_cache.app.settings import GatewaySettings, load
    from cdc_cache.notify.tokens import TokenError, issue

    with _reported("cdc-cache gateway token"):
        settings = load(GatewaySettings, config_file, **flags)
        try:
            token = issue(settings.signing_key(), channels, int(time.time()) + ttl_s)
        except TokenError as exc:
            raise ConfigError(str(exc)) from exc
    click.echo(token)
