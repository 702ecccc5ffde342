"""Source log lineages: telling a new log history from changes re-sent or arriving late.

A position (file, offset, row; or commit LSN, LSN) orders changes only within one log
history, a *lineage*. When the connector moves to another server's log (a failover to a
replica, a connector re-created with fresh offsets that re-snapshots, ``RESET MASTER``),
the new coordinates usually sort *below* everything cached, and every change would be
judged stale. Each lineage therefore gets an epoch, the first field of every position:
the changes of a later lineage sort after all changes of an earlier one.

Order is only meaningful per Kafka partition: Debezium writes one source's changes to a
partition in log order, while partitions are read with skew. So each partition is judged
on its own, from the state of what it held so far (:class:`PartitionState`), by a pure
state machine: :func:`judge` says what a change is, :func:`advance` moves the state on.
A change sorting at or above the partition's newest is in order. One sorting below it is:

- **re-sent** (the connector re-sends after a restart what it had not committed): its
  GTID sequence was already seen, or the same server wrote it within
  ``Limits.rewind_files`` binlog files (``rewind_wal_bytes`` of WAL) of the newest, or
  it is a snapshot read at the position of a snapshot this lineage read here (every read
  of a snapshot carries that one position: a read delivered again);
- **late**, from an earlier lineage: a GTID sequence, a server or a snapshot position
  seen only in an earlier lineage of this partition; it keeps that lineage's epoch, so
  it is stale (a snapshot read at an earlier lineage's snapshot position is late even
  sorting above the newest);
- **new** (a lineage starts here): any other snapshot read (a snapshot never sorts below
  changes of its own log), a GTID sequence beyond the newest seen, or a server this
  lineage never had on this partition;
- **unknown**: further back than the rewind limit with no server, or with a server of
  this lineage and no GTID: a new binlog numbering (``RESET MASTER``) and the same log
  read again (connector offsets reset) look alike. The caller holds the cache in ``ttl``
  mode until positions pass the newest again; the changes keep the current epoch, so a
  log read again is judged stale or duplicate meanwhile, as it should be.

A snapshot read sorting at or above the newest, after other changes of the lineage, is a
**re-snapshot** (a connector re-created with fresh offsets on the same log): same epoch,
but the caller must know, since rows deleted while no connector streamed are not in it.

A partition judged for the first time after the source switched lineage (its first
message came after the failover: none of its rows changed before, a partition added to
the topic, a table first changed since) has no history of its own to be led through the
switch by. :func:`place` puts its first change in the lineage the evidence the source's
other partitions recorded points to (a snapshot position, a server); a change it cannot
place starts in the source's first lineage, held (:data:`UNPLACED`) until the
partition's own stream shows a switch or the operator raises ``source_epoch``.

Messages at or below the partition's last judged Kafka offset are replays (a worker
crash, another process taking the partition over): they take the epoch recorded for
their offset (:func:`epoch_at`), so an old lineage's changes stay stale when replayed.
The epoch of a new lineage comes from the shared registry (``lineage.registry``), which
gives every partition leaving one lineage the same successor.

Kept in one module, all pure: the verdicts, the state machine that reaches them and the
encoding of its state change together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

import orjson

from cdc_cache.core.events import NO_ORIGIN, Origin
from cdc_cache.core.positions import SourceKind, SourcePosition

Coords = tuple[int, int, int]
"""A position without its epoch: (major, minor, row)."""

MAX_EARLIER: Final = 4
"""Earlier lineages a partition remembers the servers of (to recognise late changes)."""

MAX_SNAPSHOTS: Final = 4
"""Snapshot positions a partition remembers per lineage (to recognise their reads re-sent)."""


UNPLACED: Final[Coords] = (2**63 - 1, 0, 0)
"""The ``high`` of a :class:`Rewind` no position passes: held until a switch or the floor."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How far back a connector may re-send after a restart, per kind of log.

    Debezium resumes from its last committed offset, so a restart re-sends up to one
    offset-flush interval of changes: within the same binlog file or across one rotation,
    or that much WAL. Further back is not a re-send.
    """

    rewind_files: int = 1
    rewind_wal_bytes: int = 1 << 30

    def within(self, kind: SourceKind, newest: Coords, coords: Coords) -> bool:
        """True when ``coords`` is close enough below ``newest`` to be a re-send."""
        limit = self.rewind_wal_bytes if kind is SourceKind.POSTGRES else self.rewind_files
        return newest[0] - coords[0] <= limit


@dataclass(frozen=True, slots=True)
class Lineage:
    """What one partition saw of one lineage: its epoch, servers, newest GTID per stream.

    ``snapshots``: the positions of the snapshots read here in this lineage, newest last.
    Every read of one snapshot carries the same position, so a snapshot read at one of
    them sorting below the newest is that snapshot's read delivered again, not a new log.
    """

    epoch: int
    servers: frozenset[str] = frozenset()
    gtids: tuple[tuple[str, int], ...] = ()
    snapshots: tuple[Coords, ...] = ()

    def newest_gtid(self, stream: str) -> int | None:
        """The highest sequence of ``stream`` seen in this lineage, if any."""
        for name, sequence in self.gtids:
            if name == stream:
                return sequence
        return None

    def seeing(self, origin: Origin) -> Lineage:
        """The lineage with ``origin``'s server and GTID taken in (self if nothing new)."""
        servers, gtids = self.servers, self.gtids
        if origin.server is not None and origin.server not in servers:
            servers = servers | {origin.server}
        if origin.gtid is not None:
            stream, sequence = origin.gtid
            newest = self.newest_gtid(stream)
            if newest is None or sequence > newest:
                gtids = tuple(sorted({**dict(gtids), stream: sequence}.items()))
        if servers is self.servers and gtids is self.gtids:
            return self
        return Lineage(self.epoch, servers, gtids, self.snapshots)

    def snapshotted(self, coords: Coords) -> Lineage:
        """The lineage with a snapshot read at ``coords`` taken in."""
        if coords in self.snapshots:
            return self
        return replace(self, snapshots=(*self.snapshots, coords)[-MAX_SNAPSHOTS:])


@dataclass(frozen=True, slots=True)
class Rewind:
    """Positions went back with no way to tell why: held until they pass ``high`` again."""

    offset: int
    high: Coords
    reason: str


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What one Kafka partition of a source held so far.

    ``last`` is the newest position of the current lineage, ``offset`` the last Kafka
    offset judged; ``bounds`` lists the first offset of each lineage read here with its
    epoch, and ``lates`` the offsets of late changes with theirs (replays take their
    epoch from these); ``earlier`` the previous lineages' servers and snapshots;
    :attr:`snapshot` the position of the last snapshot read here.
    """

    source: str
    current: Lineage
    offset: int = -1
    last: Coords | None = None
    earlier: tuple[Lineage, ...] = ()
    bounds: tuple[tuple[int, int], ...] = ()
    rewind: Rewind | None = None
    lates: tuple[tuple[int, int], ...] = ()

    @property
    def epoch(self) -> int:
        """The epoch of the lineage this partition reads now."""
        return self.current.epoch

    @property
    def snapshot(self) -> Coords | None:
        """The position of the last snapshot read here in the current lineage."""
        snapshots = self.current.snapshots
        return snapshots[-1] if snapshots else None

    @classmethod
    def start(cls, source: str, epoch: int) -> PartitionState:
        """A partition nothing was judged on yet, reading lineage ``epoch``."""
        return cls(source, Lineage(epoch))


class Verdict(StrEnum):
    """What a change is, relative to its partition's state."""

    IN_ORDER = "in_order"
    RESNAPSHOT = "resnapshot"
    REPLAYED = "replayed"
    RESENT = "resent"
    LATE = "late"
    NEW = "new"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Judgement:
    """A verdict, the epoch the change belongs to, and why (for what operators hear of).

    The epoch is None for NEW: the registry numbers the new lineage.
    """

    verdict: Verdict
    epoch: int | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """One change as the detector sees it: its Kafka offset, position and origin."""

    offset: int
    position: SourcePosition
    origin: Origin = field(default=NO_ORIGIN)

    @property
    def coords(self) -> Coords:
        """The position without its epoch."""
        position = self.position
        return (position.major, position.minor, position.row)


def epoch_at(state: PartitionState, offset: int) -> int:
    """The epoch recorded for ``offset`` (a replayed message) on this partition."""
    for late, epoch in state.lates:
        if late == offset:
            return epoch
    found = state.bounds[0][1] if state.bounds else state.epoch
    for first, epoch in state.bounds:
        if first > offset:
            break
        found = epoch
    return found


def judge(state: PartitionState, change: Change, limits: Limits) -> Judgement:
    """Say what ``change`` is on this partition (see the module docstring)."""
    if change.offset <= state.offset:
        return Judgement(Verdict.REPLAYED, epoch_at(state, change.offset))
    current = state.current
    origin = change.origin
    last = state.last
    coords = change.coords
    if last is None or coords >= last:
        late = _proven_late(state, origin)
        if late is None and origin.snapshot and coords not in current.snapshots:
            late = _late_snapshot(state, coords, show(change.position.kind, coords))
        if late is not None:
            return late
        if origin.snapshot and last is not None and coords != state.snapshot:
            reason = f"a new snapshot at {show(change.position.kind, coords)} of this lineage"
            return Judgement(Verdict.RESNAPSHOT, current.epoch, reason)
        return Judgement(Verdict.IN_ORDER, current.epoch)
    where = f"{show(change.position.kind, coords)} below {show(change.position.kind, last)}"
    if origin.gtid is not None:
        stream, sequence = origin.gtid
        newest = current.newest_gtid(stream)
        if newest is not None:
            if sequence <= newest:
                return Judgement(Verdict.RESENT, current.epoch)
            return _new(f"GTID {stream}:{sequence} is past the newest seen ({newest}) at {where}")
        late = _proven_late(state, origin)
        if late is not None:
            return late
        return _new(f"GTID stream {stream} is new to this lineage at {where}")
    if origin.snapshot:
        # A snapshot never sorts below its own log's changes, but its reads delivered
        # again (a retried produce, a connector resuming) do: they carry its position.
        if coords in current.snapshots:
            reason = f"a read of this lineage's snapshot delivered again, at {where}"
            return Judgement(Verdict.RESENT, current.epoch, reason)
        late = _late_snapshot(state, coords, where)
        if late is not None:
            return late
        return _new(f"a snapshot read at {where}: a new log was snapshotted")
    if origin.server is not None and origin.server not in current.servers:
        for lineage in state.earlier:
            if origin.server in lineage.servers:
                reason = f"{origin.server} wrote lineage {lineage.epoch}, not this one, at {where}"
                return Judgement(Verdict.LATE, lineage.epoch, reason)
        return _new(f"{origin.server} never wrote this lineage, at {where}")
    if limits.within(change.position.kind, last, coords):
        return Judgement(Verdict.RESENT, current.epoch)
    if origin.server is not None:
        reason = (
            f"{origin.server}'s log went back further than a connector re-sends: {where}; "
            "a new binlog numbering or the log read again cannot be told apart without GTIDs"
        )
    else:
        reason = (
            f"{where} with no server identity (no server_id, no GTID): a new log or an "
            "old replay cannot be told apart"
        )
    return Judgement(Verdict.UNKNOWN, current.epoch, reason)


def _proven_late(state: PartitionState, origin: Origin) -> Judgement | None:
    """A transaction an earlier lineage of this partition already carried (by GTID)."""
    if origin.gtid is None:
        return None
    stream, sequence = origin.gtid
    if state.current.newest_gtid(stream) is not None:
        return None
    for lineage in state.earlier:
        newest = lineage.newest_gtid(stream)
        if newest is not None and sequence <= newest:
            reason = f"GTID {stream}:{sequence} was carried by lineage {lineage.epoch}"
            return Judgement(Verdict.LATE, lineage.epoch, reason)
    return None


def _late_snapshot(state: PartitionState, coords: Coords, where: str) -> Judgement | None:
    """A read of a snapshot an earlier lineage of this partition read, delivered again."""
    for lineage in state.earlier:
        if coords in lineage.snapshots:
            reason = f"a read of lineage {lineage.epoch}'s snapshot delivered again, at {where}"
            return Judgement(Verdict.LATE, lineage.epoch, reason)
    return None


def known_lineages(states: Iterable[PartitionState], latest: int) -> tuple[Lineage, ...]:
    """What a source's partitions recorded of each of its lineages, oldest first.

    Servers and snapshot positions are merged per epoch (GTID sequences are not: a
    MariaDB domain's numbering goes on across a failover, so they place nothing).
    ``latest`` (the registry's) is included even if no partition recorded it yet.
    """
    servers: dict[int, set[str]] = {latest: set()}
    snapshots: dict[int, set[Coords]] = {latest: set()}
    for state in states:
        for lineage in (state.current, *state.earlier):
            servers.setdefault(lineage.epoch, set()).update(lineage.servers)
            snapshots.setdefault(lineage.epoch, set()).update(lineage.snapshots)
    return tuple(
        Lineage(epoch, frozenset(servers[epoch]), (), tuple(sorted(snapshots[epoch])))
        for epoch in sorted(servers)
    )


def place(lineages: Sequence[Lineage], change: Change) -> Judgement:
    """The lineage of the first change judged on a partition, from ``lineages``.

    IN_ORDER with its epoch when the evidence fits exactly one lineage: a snapshot read
    at a position one lineage's snapshots had; a change of a server one lineage had, or,
    of a server no lineage had, the one lineage whose servers no partition recorded yet
    (a switch seen so far by its snapshot only). UNKNOWN otherwise (no identity, several
    lineages fit, or none), with the source's first lineage's epoch.
    """
    if len(lineages) <= 1:
        return Judgement(Verdict.IN_ORDER, lineages[0].epoch if lineages else 0)
    origin, coords = change.origin, change.coords
    where = show(change.position.kind, coords)
    if origin.snapshot:
        fits = [lineage for lineage in lineages if coords in lineage.snapshots]
        evidence = f"a snapshot read at {where}"
    elif origin.server is not None:
        fits = [lineage for lineage in lineages if origin.server in lineage.servers]
        fits = fits or [lineage for lineage in lineages if not lineage.servers]
        evidence = f"a change of {origin.server} at {where}"
    else:
        fits, evidence = [], f"a change with no server identity at {where}"
    if len(fits) == 1:
        reason = f"{evidence} belongs to lineage {fits[0].epoch}"
        return Judgement(Verdict.IN_ORDER, fits[0].epoch, reason)
    epochs = ", ".join(str(lineage.epoch) for lineage in lineages)
    reason = (
        f"{evidence} is the partition's first, after the source switched lineage "
        f"(lineages {epochs}), and fits {'several' if fits else 'none'} of them"
    )
    return Judgement(Verdict.UNKNOWN, lineages[0].epoch, reason)


def placed(
    source: str, lineages: Sequence[Lineage], change: Change, judgement: Judgement
) -> PartitionState:
    """A partition never judged, starting where :func:`place` put its first change.

    Placed, it starts with what the source's partitions recorded of the earlier lineages
    (to tell their late changes); unplaced, in the first lineage, held.
    """
    epoch = judgement.epoch
    assert epoch is not None
    if judgement.verdict is not Verdict.IN_ORDER:
        rewind = Rewind(change.offset, UNPLACED, judgement.reason)
        return replace(PartitionState.start(source, epoch), rewind=rewind)
    earlier = tuple(
        replace(lineage, snapshots=lineage.snapshots[-MAX_SNAPSHOTS:])
        for lineage in reversed(lineages)
        if lineage.epoch < epoch
    )[:MAX_EARLIER]
    return PartitionState(source, Lineage(epoch), earlier=earlier)


def _new(reason: str) -> Judgement:
    return Judgement(Verdict.NEW, None, reason)


def advance(
    state: PartitionState, change: Change, judgement: Judgement, epoch: int | None = None
) -> PartitionState:
    """The state after ``change``; ``epoch`` is the new lineage's number for a NEW verdict."""
    verdict = judgement.verdict
    if verdict is Verdict.REPLAYED:
        return state
    coords = change.coords
    if verdict in (Verdict.IN_ORDER, Verdict.RESNAPSHOT):
        rewind = state.rewind
        if rewind is not None and coords >= rewind.high:
            rewind = None
        current = state.current.seeing(change.origin)
        if change.origin.snapshot:
            current = current.snapshotted(coords)
        return replace(state, current=current, offset=change.offset, last=coords, rewind=rewind)
    if verdict is Verdict.NEW:
        if epoch is None:
            msg = "a new lineage needs its epoch from the registry"
            raise ValueError(msg)
        return enter(state, change.offset, epoch, coords, change.origin)
    if verdict is Verdict.UNKNOWN:
        assert state.last is not None  # UNKNOWN is only judged below a newest position
        high = state.rewind.high if state.rewind is not None else state.last
        rewind = Rewind(change.offset, high, judgement.reason)
        return replace(state, offset=change.offset, last=coords, rewind=rewind)
    if verdict is Verdict.LATE:
        assert judgement.epoch is not None
        return replace(
            state, offset=change.offset, lates=(*state.lates, (change.offset, judgement.epoch))
        )
    return replace(state, offset=change.offset)  # RESENT: nothing new learned


def enter(
    state: PartitionState,
    offset: int,
    epoch: int,
    coords: Coords | None = None,
    origin: Origin = NO_ORIGIN,
) -> PartitionState:
    """The partition reads lineage ``epoch`` from ``offset`` on.

    A NEW verdict, or the operator's ``source_epoch`` raised above the current epoch.
    """
    earlier = (state.current, *state.earlier)[:MAX_EARLIER] if state.bounds else state.earlier
    current = Lineage(epoch).seeing(origin)
    if origin.snapshot and coords is not None:
        current = current.snapshotted(coords)
    return replace(
        state,
        current=current,
        offset=offset if coords is not None else state.offset,
        last=coords,
        earlier=earlier,
        bounds=(*state.bounds, (offset, epoch)),
        rewind=None,
    )


class Run:
    """A partition's state with a run of plain in-order changes taken in, not yet folded.

    Nearly every change is in log order, from a server (and GTID stream) its lineage
    already had: judging it changes only the offset, the newest position and the GTID
    stream's newest sequence. :meth:`take` accepts exactly those without building a state
    per change (the hot path); :meth:`fold` gives the state :func:`judge` and
    :func:`advance` would have reached, one change at a time.
    """

    __slots__ = ("epoch", "gtids", "last", "offset", "state")

    def __init__(self, state: PartitionState) -> None:
        self.state = state
        self.epoch = state.current.epoch
        self.offset = state.offset
        self.last = state.last
        self.gtids: dict[str, int] = {}

    def take(self, offset: int, position: SourcePosition, origin: Origin) -> bool:
        """Take in a plain in-order change and return True; False for any other change."""
        last = self.last
        state = self.state
        coords = (position.major, position.minor, position.row)
        if (
            offset <= self.offset
            or last is None
            or coords < last
            or origin.snapshot
            or state.rewind is not None
            or (origin.server is not None and origin.server not in state.current.servers)
        ):
            return False
        gtid = origin.gtid
        if gtid is not None:
            stream, sequence = gtid
            newest = state.current.newest_gtid(stream)
            if newest is None:
                return False
            if sequence > newest and sequence > self.gtids.get(stream, newest):
                self.gtids[stream] = sequence
        self.offset, self.last = offset, coords
        return True

    def fold(self) -> PartitionState:
        """The partition's state with the run taken in."""
        state = self.state
        if self.offset == state.offset:
            return state
        current = state.current
        if self.gtids:
            gtids = tuple(sorted({**dict(current.gtids), **self.gtids}.items()))
            current = replace(current, gtids=gtids)
        return replace(state, current=current, offset=self.offset, last=self.last)


def forget_offsets(state: PartitionState) -> PartitionState:
    """The state for the partition read again from the start of a recreated topic.

    Its Kafka offsets mean nothing any more, while its lineage (epoch, newest position,
    servers) still judges what the new topic holds.
    """
    return replace(state, offset=-1, bounds=(), lates=())


def begin(state: PartitionState, offset: int) -> PartitionState:
    """Record the first offset judged on a partition, with the epoch it starts in."""
    if state.bounds:
        return state
    return replace(state, bounds=((offset, state.epoch),))


def show(kind: SourceKind, coords: Coords) -> str:
    """A position without its epoch, for logs."""
    if kind is SourceKind.POSTGRES:
        return f"lsn {coords[0]}/{coords[1]}"
    return f"binlog {coords[0]}:{coords[1]}#{coords[2]}"


def dump_state(state: PartitionState) -> bytes:
    """The state as JSON, for the shared registry."""
    rewind = state.rewind
    return orjson.dumps(
        {
            "source": state.source,
            "current": _dump_lineage(state.current),
            "offset": state.offset,
            "last": state.last,
            "earlier": [_dump_lineage(lineage) for lineage in state.earlier],
            "bounds": state.bounds,
            "lates": state.lates,
            "snapshot": state.snapshot,
            "rewind": None
            if rewind is None
            else {"offset": rewind.offset, "high": rewind.high, "reason": rewind.reason},
        }
    )


def load_state(data: bytes | str) -> PartitionState:
    """The inverse of :func:`dump_state`; raises ValueError on anything else."""
    try:
        doc = orjson.loads(data)
        rewind = doc["rewind"]
        last = doc["last"]
        current = _load_lineage(doc["current"])
        if not current.snapshots and doc.get("snapshot") is not None:  # an older release's
            current = current.snapshotted(_coords(doc["snapshot"]))
        return PartitionState(
            source=str(doc["source"]),
            current=current,
            offset=int(doc["offset"]),
            last=None if last is None else _coords(last),
            earlier=tuple(_load_lineage(item) for item in doc["earlier"]),
            bounds=tuple((int(offset), int(epoch)) for offset, epoch in doc["bounds"]),
            lates=tuple((int(offset), int(epoch)) for offset, epoch in doc.get("lates", ())),
            rewind=None
            if rewind is None
            else Rewind(int(rewind["offset"]), _coords(rewind["high"]), str(rewind["reason"])),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        msg = f"not a partition lineage state: {exc}"
        raise ValueError(msg) from None


def _dump_lineage(lineage: Lineage) -> dict[str, Any]:
    return {
        "epoch": lineage.epoch,
        "servers": sorted(lineage.servers),
        "gtids": [list(pair) for pair in lineage.gtids],
        "snapshots": [list(coords) for coords in lineage.snapshots],
    }


def _load_lineage(doc: dict[str, Any]) -> Lineage:
    return Lineage(
        int(doc["epoch"]),
        frozenset(str(server) for server in doc["servers"]),
        tuple((str(stream), int(sequence)) for stream, sequence in doc["gtids"]),
        tuple(_coords(coords) for coords in doc.get("snapshots", ())),
    )


def _coords(value: list[Any]) -> Coords:
    major, minor, row = (int(part) for part in value)
    return (major, minor, row)
