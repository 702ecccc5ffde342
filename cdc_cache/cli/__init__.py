"""The ``cdc-cache`` command line: :func:`main`, and one module per command or group.

Each command parses its flags, loads its settings and calls into the package; errors end
as one line and an exit code (``report``).

May import: core, source, plan, dlq, mode, sink, lineage, continuity, fallback, aside, app,
notify, tools, inspector.
"""

from __future__ import annotations

import click

from cdc_cache import __version__
from cdc_cache.cli import (
    continuity,
    dlq,
    gateway,
    inspector,
    mode,
    rules,
    snapshot,
    tools,
    trace,
    worker,
)
from cdc_cache.cli.dev import dev


@click.group()
@click.version_option(__version__, prog_name="cdc-cache")
def main() -> None:
    """cdc-cache: Debezium change events to version-gated Redis cache operations."""


for command in (
    worker.run,
    worker.watchdog,
    tools.verify,
    rules.rules,
    trace.trace,
    inspector.inspect,
    tools.demo,
    tools.connectors,
    snapshot.snapshot,
    mode.mode,
    continuity.continuity,
    dlq.dlq,
    gateway.gateway,
    dev,
):
    main.add_command(command)
