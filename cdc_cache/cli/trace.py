"""``cdc-cache trace``: one row's changes on its topic and what the version gate does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cdc_cache.cli.report import reported


@click.command()
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="The worker's settings file."
)
@click.option("--rules", type=click.Path(path_type=Path), help="Rules file (YAML).")
@click.option("--brokers", help="Kafka bootstrap servers, comma-separated.")
@click.option("--redis-url", help="The cache's Redis.")
@click.option("--table", help="The row's table (<db>.<table> or <schema>.<table>).")
@click.option(
    "--key",
    "key_pairs",
    multiple=True,
    metavar="COLUMN=VALUE",
    help="The row's primary key, one per key column (with --table).",
)
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="Read these topics (default: the worker's topics named for the table, else all).",
)
@click.option("--partition", type=int, help="With --offset: the record's partition.")
@click.option("--offset", type=int, help="Trace the row of the record at --topic/--partition.")
@click.option("--json", "as_json", is_flag=True, help="Print the trace as JSON.")
def trace(  # noqa: PLR0917 (click passes every option by name)
    config_file: Path | None,
    table: str | None,
    key_pairs: tuple[str, ...],
    topics: tuple[str, ...],
    partition: int | None,
    offset: int | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Show one row's changes on its topic and what the version gate does with each.

    Every change of the row still on the topic, the ops the rules plan for each, what the
    version gate did or would do now (applied, stale, duplicate), then the row's keys as
    Redis holds them (value, TTL, version).

    Name the row by --table and --key, or by one record: --topic, --partition, --offset.
    Index keys (zadd, sadd): the member ops are judged against the member's version, and
    the row's memberships shown (present with its score, or absent; version).

    Reads the worker's settings (--config, CDC_CACHE_* variables, or the flags). Exit 1
    when an operation is newer than its key's version (the key misses a change on the
    topic: the worker is behind, or a write was lost), or when an index membership differs
    from what the change its version names wrote (the index was changed by hand).
    """
    import orjson

    from cdc_cache.app.load import load
    from cdc_cache.app.settings import TopicSettings
    from cdc_cache.core.keys import use_namespace
    from cdc_cache.plan.rules_loader import load_rules
    from cdc_cache.tools.trace import parse_row_key
    from cdc_cache.tools.trace_report import as_json as trace_json
    from cdc_cache.tools.trace_report import format_text
    from cdc_cache.tools.tracer import Tracer

    by_record = offset is not None
    if by_record and (len(topics) != 1 or partition is None or table or key_pairs):
        msg = "--offset needs one --topic and --partition, and no --table/--key"
        raise click.UsageError(msg)
    if not by_record and not table:
        msg = "name the row: --table and --key, or --topic, --partition and --offset"
        raise click.UsageError(msg)
    try:
        key = parse_row_key(key_pairs) if table else {}
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with reported("cdc-cache trace", flags.get("redis_url")):
        settings = load(TopicSettings, config_file, topics=list(topics) or None, **flags)
        use_namespace(settings.namespace)
        tracer = Tracer(settings, load_rules(settings.rules, settings.table_identity))
        if by_record:
            assert partition is not None and offset is not None
            found = tracer.record(topics[0], partition, offset)
        else:
            assert table is not None
            found = tracer.row(table, key, topics)
    if as_json:
        click.echo(orjson.dumps(trace_json(found), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_text(found))
    raise SystemExit(1 if found.pending or found.damaged else 0)
