"""``cdc-cache verify`` of index keys: the members the rows imply, judged against Redis.

Runs over the rows verify read of a table with index rules (zadd, sadd); what it judges is
in :mod:`cdc_cache.tools.index_judge`. An index key with a finding is re-checked like a
key's difference (``settle_retries`` times, ``settle_delay_s`` apart): the rows that render
it (found by the column values parsed back from the key) are read again, the index too, and
only the findings of the same members that persist are reported, so a change in flight is
no false alarm. Index keys are read through the client like keys (on Redis Cluster each
from its own slot, its record from the version bucket of that slot).

:func:`read_members` reads some members of index keys only (with their versions): what
the inspector and ``cdc-cache trace`` judge and show for one row, without reading whole
indexes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from redis import exceptions as rex

from cdc_cache.core.keys import index_field, member_field, ns
from cdc_cache.plan.cache_ops import IndexKind
from cdc_cache.plan.rules import Action, KeyRule, TableRules
from cdc_cache.sink.connection import Client
from cdc_cache.sink.versions import HORIZON_DIGITS
from cdc_cache.tools.index_judge import (
    ExpectedIndex,
    IndexIssue,
    Pair,
    StoredIndex,
    expected_indexes,
    judge_index,
)
from cdc_cache.tools.verify_judge import KeyPattern, Settling, derive
from cdc_cache.tools.verify_reads import Database, chunks, version_text
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
            holding = _holding(record)
            if isinstance(held, rex.ResponseError):  # WRONGTYPE: not the rule's kind of key
                out.append(StoredIndex({}, wrong_type=True, left_holding=holding))
                continue
            pairs = held if isinstance(held, list) else ((member, None) for member in held)
            members = {bytes(m).decode("utf-8", "replace"): s for m, s in pairs}
            out.append(StoredIndex(members, left_holding=holding))
    return out


def _holding(record: object) -> bool:
    """Whether an index's record says the worker left members in it."""
    return isinstance(record, bytes) and record[HORIZON_DIGITS:][:1] == b"1"


@dataclass(frozen=True, slots=True)
class HeldMembers:
    """Some members of index keys as Redis holds them, with their versions.

    ``indexes``: each index key read, its ``members`` those of the members asked about that
    it holds (``exists`` says whether it exists); ``versions``: each pair's version (None:
    none), as :mod:`cdc_cache.sink.versions` encodes it.
    """

    indexes: dict[str, StoredIndex]
    versions: dict[Pair, str | None]


def read_members(client: Client, pairs: Mapping[Pair, IndexKind]) -> HeldMembers:
    """Each pair's score or presence and version, each index's existence and record.

    Pipelined: per index key EXISTS and its record, per pair ZSCORE or SISMEMBER (by the
    index's kind) and its version.
    """
    by_key: dict[str, list[str]] = {}
    for key, member in sorted(pairs):
        by_key.setdefault(key, []).append(member)
    indexes: dict[str, StoredIndex] = {}
    versions: dict[Pair, str | None] = {}
    for chunk in chunks(list(by_key.items())):
        pipe = client.pipeline(transaction=False)
        for key, members in chunk:
            pipe.exists(key)
            pipe.hget(ns().version_key(key), index_field(key))
            for member in members:
                if pairs[key, member] is IndexKind.ZSET:
                    pipe.zscore(key, member)
                else:
                    pipe.sismember(key, member)
                pipe.hget(ns().version_key(key), member_field(key, member))
        replies = iter(pipe.execute(raise_on_error=False))
        for key, members in chunk:
            exists, record = next(replies), next(replies)
            held: dict[str, float | None] = {}
            wrong_type = False
            for member in members:
                reply, version = next(replies), next(replies)
                for answer in (exists, record, reply, version):
                    if isinstance(answer, Exception) and not isinstance(answer, rex.ResponseError):
                        raise answer
                versions[key, member] = version_text(version)
                if isinstance(reply, rex.ResponseError):  # WRONGTYPE: not the rule's kind
                    wrong_type = True
                elif pairs[key, member] is IndexKind.ZSET and reply is not None:
                    held[member] = float(reply)
                elif pairs[key, member] is IndexKind.SET and reply:
                    held[member] = None
            indexes[key] = StoredIndex(
                held, wrong_type=wrong_type, left_holding=_holding(record), exists=bool(exists)
            )
    return HeldMembers(indexes, versions)


def implied_by_a_row(
    db: Database, table: TableRules, primary_key: Sequence[str], rule: KeyRule, pair: Pair
) -> bool:
    """Whether a row of ``table`` implies ``pair``'s member in its index key (one query).

    The rows are looked up by the column values parsed back from the key and the member;
    False when they are all digested (no lookup would be bounded), as for a key.
    """
    key, member = pair
    values = KeyPattern.of(rule).parse(key)
    if values is None or rule.member is None:
        return False
    values |= KeyPattern.of(replace(rule, template=rule.member)).parse(member) or {}
    if not values:
        return False
    rows = db.matching(table.table, values, as_text=True, shape=table.values)
    return any(
        (op.key, op.member) == pair
        for row in rows
        for _, op in derive(table, row, primary_key).members
    )


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
