"""``cdc-cache verify``, ``demo`` and ``connectors``: the tools around the worker."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click

from cdc_cache.cli.report import JSON_OUTPUT, NAMESPACE, echo_json, reported, with_options


@click.command()
@click.option(
    "--db", "dsn", required=True, help="mysql://user:pass@host:port/db or postgresql://..."
)
@click.option("--rules", type=click.Path(path_type=Path), required=True, help="Rules file (YAML).")
@click.option(
    "--redis-url", required=True, help="redis://, rediss://, redis+sentinel://, or a cluster URL."
)
@NAMESPACE
@click.option(
    "--server",
    help="With table_identity: server_db_table, the server (topic.prefix) whose database "
    "--db is: only its tables are checked, as <db>.<table>.",
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
@click.option(
    "--repair",
    is_flag=True,
    help="Rewrite the stale, missing and unexpected keys found from the database, "
    "version-gated below any change committed meanwhile (MariaDB; see README).",
)
@click.option(
    "--epoch",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="With --repair: the lowest epoch of a repair (after a lineage switch, the current one).",
)
@JSON_OUTPUT
def verify(
    dsn: str, rules: Path, redis_url: str, server: str | None, as_json: bool, **options: Any
) -> None:
    """Compare the cache with the database; exit 1 on stale or unexpected keys (or index members).

    Progress goes to stderr: a bar on a terminal, a line every few seconds otherwise.
    With --repair the exit code still says what was found; the report adds the gate's
    outcome of each rewrite (applied, invalidated, or stale/duplicate: a newer change won).
    """
    from cdc_cache.cli.progress import Progress
    from cdc_cache.core.errors import ConfigError
    from cdc_cache.core.identity import TableIdentity
    from cdc_cache.plan.rules_loader import load_rules
    from cdc_cache.sink.connection import connect
    from cdc_cache.tools.verify import verify as run_verify

    with reported("cdc-cache verify", redis_url), Progress("verify") as progress:
        if server is None:
            covered = load_rules(rules)
        else:  # that server's tables, as its database names them
            try:
                covered = load_rules(rules, TableIdentity.SERVER_DB_TABLE).of_server(server)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            options["tables"] = [t.removeprefix(f"{server}.") for t in options["tables"]]
        client = connect(redis_url)
        report = run_verify(dsn, covered, client, progress=progress, **options)
    if as_json:
        echo_json(report.as_json())
    else:
        click.echo(report.format())
    sys.exit(report.exit_code)


@click.command()
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


@click.group()
def connectors() -> None:
    """Apply the Debezium connector files to Kafka Connect and report whether they run."""


def _connector_options(command: Callable[..., None]) -> Callable[..., None]:
    return with_options(
        command,
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
            help="Wait up to SECONDS for every connector and task to be RUNNING "
            "(progress on stderr).",
        ),
        JSON_OUTPUT,
    )


def _run_connectors(command: Literal["apply", "status"], **options: Any) -> None:
    from cdc_cache.cli.progress import Progress
    from cdc_cache.tools.connectors import run as run_connectors

    with reported(f"cdc-cache connectors {command}"), Progress("connectors running") as progress:
        code = run_connectors(
            command,
            out=click.echo,
            err=lambda line: click.echo(line, err=True),
            progress=progress,
            **options,
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
