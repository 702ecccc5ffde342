"""``cdc-cache snapshot``: the connector asked to read tables again."""

from __future__ import annotations

import click
import orjson

from cdc_cache.cli.report import reported


@click.command()
@click.option(
    "--db",
    "dsn",
    required=True,
    help="The source database, as a user that may INSERT into the signal table: "
    "mysql://user:pass@host:port/db or postgresql://...",
)
@click.option(
    "--signal-table",
    required=True,
    help="The connector's signal.data.collection, e.g. inventory.debezium_signal.",
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    required=True,
    help="<db>.<table> to read again (repeatable).",
)
@click.option("--id", "signal_id", help="The signal's id (default: a new UUID).")
@click.option("--json", "as_json", is_flag=True, help="Print the signal written as JSON.")
def snapshot(
    dsn: str, signal_table: str, tables: tuple[str, ...], signal_id: str | None, as_json: bool
) -> None:
    """Ask the connector for an incremental snapshot of tables, through its signal table.

    The worker applies the rows it reads like any other change, version-gated: a change
    committed during the snapshot wins. Exit 2 when the signal cannot be written.
    """
    from cdc_cache.tools.resnapshot import request_snapshot, snapshot_signal

    with reported("cdc-cache snapshot"):
        signal = snapshot_signal(tables, signal_id)
        request_snapshot(dsn, signal_table, signal)
    if as_json:
        doc = {"id": signal.id, "type": signal.type, "tables": list(signal.tables)}
        click.echo(orjson.dumps({**doc, "signal_table": signal_table}).decode())
    else:
        click.echo(
            f"incremental snapshot {signal.id} requested for {', '.join(signal.tables)}: the "
            "connector reads them in chunks while it streams; their rows reach the cache "
            "through the worker like any change"
        )
