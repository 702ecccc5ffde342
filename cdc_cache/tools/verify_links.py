"""``cdc-cache verify`` of dependent keys: every link the rows imply, judged against Redis.

Runs over the rows verify read of a table whose rows put dependent keys under parent rows'
tags (a table with ``depends_on`` keys, a join table). What it judges and what it cannot is
in :mod:`cdc_cache.tools.link_judge`. A finding is re-checked like a key's difference
(``settle_retries`` times, ``settle_delay_s`` apart), re-reading the row and Redis, so a
change still in flight is no false alarm: a link the row no longer implies is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdc_cache.core.events import Row
from cdc_cache.plan.rules import Rules, TableRules
from cdc_cache.sink.connection import Client
from cdc_cache.tools.link_judge import (
    FAILING_LINKS,
    Link,
    LinkFinding,
    describe_link,
    expected_links,
    judge_link,
)
from cdc_cache.tools.verify_judge import Settling
from cdc_cache.tools.verify_reads import Database, read_links
from cdc_cache.tools.verify_report import TableReport

_Found = tuple[Link, LinkFinding, str]


@dataclass
class LinkCheck:
    """Judges the links of one table's rows; see the module docstring."""

    db: Database
    client: Client
    rules: Rules
    settling: Settling

    def run(
        self,
        table: TableRules,
        rows: Sequence[Row],
        primary_key: tuple[str, ...],
        report: TableReport,
    ) -> None:
        """Add the links ``rows`` imply, and what is wrong with them, to ``report``."""
        owners: dict[Link, Mapping[str, Any]] = {}
        for row in rows:
            key = {column: row[column] for column in primary_key}
            for link in expected_links(self.rules, table, row, primary_key):
                owners[link] = key
        report.links = len(owners)
        found = self.settling.settled(
            self._judged(list(owners)),
            lambda now: self._judged(self._still_implied(table, primary_key, now, owners)),
            lambda now: not any(finding in FAILING_LINKS for _, finding, _ in now),
        )
        for _, finding, detail in found:
            report.add_link(finding, detail)

    def _judged(self, links: Sequence[Link]) -> list[_Found]:
        out: list[_Found] = []
        for link, state in zip(links, read_links(self.client, links), strict=True):
            finding = judge_link(state)
            if finding is not None:
                out.append((link, finding, describe_link(finding, link, state)))
        return out

    def _still_implied(
        self,
        table: TableRules,
        primary_key: tuple[str, ...],
        found: Sequence[_Found],
        owners: Mapping[Link, Mapping[str, Any]],
    ) -> list[Link]:
        """The links found wrong that their rows, read again, still imply."""
        out: list[Link] = []
        for link, _, _ in found:
            rows = self.db.matching(table.table, owners[link], as_text=False, shape=table.values)
            if rows and link in expected_links(self.rules, table, rows[0], primary_key):
                out.append(link)
        return out
