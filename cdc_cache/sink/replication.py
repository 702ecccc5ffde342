"""What a Redis primary says about its replication, and what a primary switch lost (pure).

Redis replication is asynchronous: a write the primary acknowledged may not have reached
any replica when the primary dies, and the replica promoted in its place then never had
it. Every primary carries a replication id (``master_replid``) and an offset into its
replication stream (``master_repl_offset``); a promoted replica takes a new id and keeps
its former primary's id as ``master_replid2``, together with the offset up to which it
shares that history (``second_repl_offset``). Comparing the two tells exactly whether the
new primary holds every write known to have been replicated. A server that restarted
empty has a new id and no such history: everything it held before is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class ReplicaLink:
    """One replica as its primary sees it: state, acknowledged offset, seconds since ack."""

    address: str
    online: bool
    offset: int
    ack_age_s: int


@dataclass(frozen=True, slots=True)
class ReplicationInfo:
    """The ``INFO replication`` section of one server, as far as cdc-cache needs it."""

    role: str
    replid: str
    replid2: str
    offset: int
    second_offset: int
    replicas: tuple[ReplicaLink, ...] = ()

    @classmethod
    def parse(cls, info: Mapping[str, Any]) -> ReplicationInfo:
        """From redis-py's parsed INFO (``slaveN`` entries are dicts; ids may parse as 0)."""
        replicas = []
        for index in range(int(info.get("connected_slaves", 0) or 0)):
            entry = info.get(f"slave{index}")
            if isinstance(entry, Mapping):
                replicas.append(
                    ReplicaLink(
                        f"{entry.get('ip')}:{entry.get('port')}",
                        entry.get("state") == "online",
                        int(entry.get("offset", 0)),
                        int(entry.get("lag", 0)),
                    )
                )
        return cls(
            role=str(info.get("role", "")),
            replid=_replid(info.get("master_replid")),
            replid2=_replid(info.get("master_replid2")),
            offset=int(info.get("master_repl_offset", 0)),
            second_offset=int(info.get("second_repl_offset", -1)),
            replicas=tuple(replicas),
        )

    @property
    def primary(self) -> bool:
        """True for a primary (``role:master``)."""
        return self.role == "master"

    def online(self) -> int:
        """How many replicas are online (streaming, not syncing)."""
        return sum(replica.online for replica in self.replicas)

    def lag_bytes(self) -> int:
        """Bytes of the stream the most lagging online replica has not acknowledged.

        0 without an online replica (``online()`` tells that case apart).
        """
        offsets = [replica.offset for replica in self.replicas if replica.online]
        return max(0, self.offset - min(offsets)) if offsets else 0

    def ack_age_s(self) -> int:
        """Seconds since the least recent acknowledgement among the online replicas."""
        return max((r.ack_age_s for r in self.replicas if r.online), default=0)

    def holds_history_of(self, replid: str) -> int:
        """The last offset of ``replid``'s stream this server holds, or -1 for none of it."""
        if replid and replid == self.replid:
            return self.offset
        if replid and replid == self.replid2:
            return self.second_offset - 1
        return -1


@dataclass(frozen=True, slots=True)
class PrimaryRecord:
    """What is known of one primary: its id, the highest offset seen, and what is durable.

    ``durable`` is the offset up to which writes are known to be on the replicas the
    operator requires (None when no such confirmation is asked for: nothing is known
    durable then).
    """

    replid: str
    seen: int
    durable: int | None

    @classmethod
    def first(cls, info: ReplicationInfo, *, tracked: bool) -> PrimaryRecord:
        """A primary seen for the first time.

        Writes made before it was first seen were confirmed (or are replayed) by an earlier
        run, so with confirmation on they count as durable from here.
        """
        return cls(info.replid, info.offset, info.offset if tracked else None)

    def seen_at(self, info: ReplicationInfo) -> PrimaryRecord:
        """The same primary, seen again."""
        return PrimaryRecord(self.replid, max(self.seen, info.offset), self.durable)

    def confirmed(self, offset: int) -> PrimaryRecord:
        """Writes up to ``offset`` reached the required replicas."""
        durable = offset if self.durable is None else max(self.durable, offset)
        return PrimaryRecord(self.replid, max(self.seen, offset), durable)


class Switch(StrEnum):
    """How the server now answering as primary relates to the one known before."""

    NONE = "none"  # the same primary, its history intact
    COMPLETE = "complete"  # another server, holding every write known durable
    INCOMPLETE = "incomplete"  # writes may be missing: not all known durable, or lost


def classify(before: PrimaryRecord, now: ReplicationInfo) -> Switch:
    """Compare what was known of a primary with the server answering in its place.

    The same id at an offset not below the one seen is the same primary. Anything else is
    a switch; it is complete only when writes were confirmed durable and the new server's
    history reaches the last confirmed offset.
    """
    held = now.holds_history_of(before.replid)
    if now.replid == before.replid and held >= before.seen:
        return Switch.NONE
    if before.durable is not None and held >= before.durable:
        return Switch.COMPLETE
    return Switch.INCOMPLETE


def _replid(value: object) -> str:
    """A replication id as text; the all-zero id (no previous primary) becomes ''."""
    text = "" if value is None else str(value)
    return "" if text.strip("0") == "" else text
