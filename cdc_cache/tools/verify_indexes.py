"""``cdc-cache verify`` of index keys: the members the rows imply, judged against Redis.

Runs over the rows verify read of a table with index rules (zadd, sadd); what it judges is
in :mod:`cdc_cache.tools.index_judge`. An index key with a finding is re-checked like a
key's difference (``settle_retries`` times, ``settle_delay_s`` apart): the rows that render
it (found by the column values parsed back from the key) are read again, the index too, and
only the findings of the same members that persist are reported, so a change in flight is
no false alarm. Index keys are read through the client like keys (on Redis Cluster each
from its own slot, its record from the version bucket of that slot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis import exceptions as rex

from cdc_cache.core.keys import index_field, ns
from cdc_cache.plan.rules import Action, KeyRule, TableRules
from cdc_cache.sink.connection import Client
from cdc_cache.sink.versions import HORIZON_DIGITS
from cdc_cache.tools.index_judge import (
    ExpectedIndex,
    IndexIssue,
    StoredIndex,
    expected_indexes,
    judge_index,
)
from cdc_cache.tools.verify_judge import KeyPattern, Settling, derive
from cdc_cache.tools.verify_reads import Database, chunks
from cdc_cache.tools.verify_report import TableReport


def read_indexes(client: Client, indexes: Sequence[tuple[str, KeyRule]]) -> list[StoredIndex]:
    """Each index key's members (with scores for a zset) and its record, pipelined."""
    out: list[StoredIndex] = []
    for chunk in chunks(indexes):
        pipe = client.pipeline(transaction=False)
        for key, rule in chunk:
            if rule.action is Action.ZADD:
                pipe.zrange(key, 0, -1, withscores=True)
            else:
                pipe.smembers(key)
            pipe.hget(ns().version_key(key), index_field(key))
        replies = pipe.execute(raise_on_error=False)
        for held, record in zip(replies[::2], replies[1::2], strict=True):
            for reply in (held, record):
                if isinstance(reply, Exception) and not isinstance(reply, rex.ResponseError):
                    raise reply
            holding = isinstance(record, bytes) and record[HORIZON_DIGITS:][:1] == b"1"
            if isinstance(held, rex.ResponseError):  # WRONGTYPE: not the rule's kind of key
                out.append(StoredIndex({}, wrong_type=True, left_holding=holding))
                continue
            pairs = held if isinstance(held, list) else ((member, None) for member in held)
            members = {bytes(m).decode("utf-8", "replace"): s for m, s in pairs}
            out.append(StoredIndex(members, left_holding=holding))
    return out


@dataclass
class IndexCheck:
    """Judges the index keys of one table's rows; see the module docstring."""

    db: Database
    client: Client
    settling: Settling

    def run(
        self,
        table: TableRules,
        primary_key: Sequence[str],
        indexes: Mapping[str, ExpectedIndex],
        report: TableReport,
        *,
        complete: bool,
    ) -> None:
        """Add what is wrong with ``indexes`` (index key → what the rows imply) to ``report``.

        ``complete``: the rows are every row of the table, so members (and index keys) no
        row implies are unexpected.
        """
        report.indexes = sum(1 for e in indexes.values() if e.members)
        report.members = sum(len(e.members) for e in indexes.values())
        found = self.settling.settled(
            self._judged(indexes, complete=complete),
            lambda now: self._persisting(table, primary_key, indexes, now),
        )
        for key, issues in found.items():
            for issue in issues:
                report.add_index(issue.finding, f"{key}: {issue.detail}")

    def _persisting(
        self,
        table: TableRules,
        primary_key: Sequence[str],
        indexes: Mapping[str, ExpectedIndex],
        found: Mapping[str, list[IndexIssue]],
    ) -> dict[str, list[IndexIssue]]:
        """The findings of ``found`` still there with the index and its rows read again."""
        again = self._judged(
            {key: self._now(table, primary_key, indexes[key].rule, key) for key in found},
            complete=True,
        )
        return {
            key: kept
            for key, issues in again.items()
            if (kept := [i for i in issues if i.member in {p.member for p in found[key]}])
        }

    def _judged(
        self, indexes: Mapping[str, ExpectedIndex], *, complete: bool
    ) -> dict[str, list[IndexIssue]]:
        keys = list(indexes)
        stored = read_indexes(self.client, [(key, indexes[key].rule) for key in keys])
        judged = {
            key: judge_index(indexes[key].members, now, complete=complete)
            for key, now in zip(keys, stored, strict=True)
        }
        return {key: issues for key, issues in judged.items() if issues}

    def _now(
        self, table: TableRules, primary_key: Sequence[str], rule: KeyRule, key: str
    ) -> ExpectedIndex:
        """The members of ``key`` as the rows that render it, read again, imply."""
        values = KeyPattern.of(rule).parse(key) or {}
        rows = self.db.matching(table.table, values, as_text=True, shape=table.values)
        members = (m for row in rows for m in derive(table, row, primary_key).members)
        return expected_indexes(members).get(key, ExpectedIndex(rule))
