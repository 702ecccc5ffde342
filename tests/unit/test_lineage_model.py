"""Lineage detection against a model of a source failing over, as hypothesis properties.

A source writes changes to keys through its log; the log switches lineage (a replica
promoted, the connector re-snapshotting from a lower binlog file) one or more times.
Its connector re-sends what it had not committed after restarts, a late change of the old
lineage may follow the switch, and every change lands on one of a few Kafka partitions,
which the worker reads with skew, in batches, crashing now and then (also between judging
a batch and applying it) and replaying from an earlier recovery point. The worker's epochs go into a model of the version-gated cache.

Properties: with a server identity (server id or GTID) every change gets its lineage's
epoch, the same on every partition and increasing with each switch, and the cache ends
equal to the database; without identity, the cache ends equal to the database or a
``lineage`` hold was raised: never silently stale. Disabling detection (one epoch for
everything) makes the cache stale: the model can fail.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdc_cache.core.events import ChangeEvent, Op, Origin, SourceRecord
from cdc_cache.core.positions import SourcePosition
from cdc_cache.lineage.model import Coords, Limits
from cdc_cache.lineage.tracker import LineageConfig, LineageTracker
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from tests.lineage_fakes import MemoryRegistry

SOURCE = "db"
TOPIC = "db.inv.t"


class RecordingHolds(Holds):
    """Holds that remember the cannot-tell ones (a switch's timed settling is expected)."""

    def __init__(self) -> None:
        super().__init__()
        self.raised: list[str] = []
        self.settling = 0

    def hold(self, cause: Cause, scope: str, reason: str, *, for_s: float | None = None) -> None:
        if for_s is None:
            self.raised.append(reason)
        else:
            self.settling += 1
        super().hold(cause, scope, reason, for_s=for_s)


@dataclass(frozen=True)
class Emitted:
    """One message the connector published."""

    lineage: int
    key: int
    partition: int
    coords: Coords
    origin: Origin
    value: int


@dataclass
class Scenario:
    mode: str
    partitions: int
    messages: list[Emitted] = field(default_factory=list)
    truth: dict[int, int] = field(default_factory=dict)
    snapshots: list[bool] = field(default_factory=list)
    forced: bool = False


@st.composite
def scenarios(draw: st.DrawFn, modes: tuple[str, ...] = ("server", "gtid", "none")) -> Scenario:
    """A source's history: lineages, each below the previous one (a failover's lower
    binlog files), with re-sends within one file and late changes of the old lineage."""
    mode = draw(st.sampled_from(modes))
    scenario = Scenario(mode, draw(st.integers(1, 3)))
    keys = draw(st.integers(1, 5))
    values = itertools.count(1)
    top_file = draw(st.integers(200, 300))
    previous: list[Emitted] = []
    for lineage in range(draw(st.integers(1, 3))):
        server = f"server:{lineage + 1}" if mode != "none" else None
        file = draw(st.integers(top_file - 40, top_file)) if lineage == 0 else top_file
        pos = 4
        sequence = itertools.count(1)
        snapshot = lineage > 0 and draw(st.booleans())
        scenario.snapshots.append(snapshot)
        mine: list[Emitted] = []

        def emit(item: Emitted) -> None:
            scenario.messages.append(item)

        if snapshot:  # every row as it is now, at one position, from no known server
            for key, value in sorted(scenario.truth.items()):
                partition = draw(st.integers(0, scenario.partitions - 1))
                emit(Emitted(lineage, key, partition, (file, pos, 0), Origin(snapshot=True), value))  # fmt: skip
        # At least one change on every partition, then a random workload; the first
        # lineage may miss some partitions (their first change comes after a failover).
        seen = draw(st.integers(1, scenario.partitions)) if lineage == 0 else scenario.partitions
        plan = list(range(seen)) + [
            draw(st.integers(0, scenario.partitions - 1)) for _ in range(draw(st.integers(0, 12)))
        ]
        for partition in plan:
            if draw(st.integers(0, 9)) == 0:
                file += 1
            pos += draw(st.integers(1, 300))
            key, value = draw(st.integers(0, keys - 1)), next(values)
            gtid = (f"uuid{lineage + 1}", next(sequence)) if mode == "gtid" else None
            item = Emitted(lineage, key, partition, (file, pos, 0), Origin(server, gtid), value)  # fmt: skip
            scenario.truth[key] = value
            emit(item)
            mine.append(item)
            if draw(st.integers(0, 7)) == 0:  # the connector restarts and re-sends a tail
                tail = [m for m in mine if m.coords[0] >= file - 1][-draw(st.integers(1, 4)) :]
                for again in tail:
                    emit(again)
            if mode == "gtid" and previous and draw(st.integers(0, 7)) == 0:
                emit(draw(st.sampled_from(previous)))  # the old lineage's connector, late
        previous = mine
        # The next lineage's files all sort below this one's (a replica's own numbering).
        top_file = min(m.coords[0] for m in mine) - draw(st.integers(20, 60))
    return scenario


@dataclass
class Run:
    epochs: list[tuple[Emitted, int]]
    cache: dict[int, int]
    holds: list[str]
    settling: int


def run(scenario: Scenario, rnd: random.Random, *, detect: bool = True, floor: int = 0) -> Run:
    """Read the partitions with skew and crashes, judge, apply through a gate model."""
    streams: dict[int, list[Emitted]] = {p: [] for p in range(scenario.partitions)}
    for item in scenario.messages:
        streams[item.partition].append(item)
    registry = MemoryRegistry()
    holds = RecordingHolds()
    config = LineageConfig(floor, Limits(rewind_files=1))

    def tracker() -> LineageTracker:
        return LineageTracker(lambda: registry, holds, config)  # type: ignore[arg-type,return-value]

    current = tracker()
    versions: dict[int, tuple[int, Coords]] = {}
    cache: dict[int, int] = {}
    epochs: list[tuple[Emitted, int]] = []
    read = dict.fromkeys(streams, 0)
    started: set[int] = set()
    known: set[tuple[int, bool, str | None]] = set()

    def ready(partition: int) -> bool:
        # A partition whose first change belongs to a later lineage is read once another
        # partition was judged with that lineage's evidence (its snapshot, its server).
        first = streams[partition][0]
        return partition in started or first.lineage == 0 or _evidence(first) in known

    while any(read[p] < len(streams[p]) for p in streams):
        left = [p for p in streams if read[p] < len(streams[p])]
        eligible = [p for p in left if ready(p)]
        scenario.forced |= not eligible
        partition = rnd.choice(eligible or left)
        batch = [
            (offset, streams[partition][offset])
            for offset in range(read[partition], min(len(streams[partition]), read[partition] + rnd.randint(1, 3)))
        ]  # fmt: skip
        records = [SourceRecord(TOPIC, partition, offset, b"k", b"v") for offset, _ in batch]
        session = current.session(records)
        judged = []
        for record, (_, item) in zip(records, batch, strict=True):
            event = _event(item, session.hint(record))
            judged.append((item, session.epoch_of(record, event) if detect else floor))
        session.close()
        started.add(partition)
        known.update(_evidence(item) for item, _ in judged)
        if rnd.random() < 0.05:  # crash after judging, before applying: nothing applied
            current = tracker()
            read = {p: rnd.randint(0, n) for p, n in read.items()}
            continue
        for item, epoch in judged:
            epochs.append((item, epoch))
            version = (epoch, item.coords)
            if version > versions.get(item.key, (-1, (0, 0, 0))):
                versions[item.key], cache[item.key] = version, item.value
        read[partition] += len(batch)
        if rnd.random() < 0.1:  # crash: a new process resumes from earlier recovery points
            current = tracker()
            read = {p: rnd.randint(0, n) for p, n in read.items()}
    return Run(epochs, cache, holds.raised, holds.settling)


def _evidence(item: Emitted) -> tuple[int, bool, str | None]:
    """What a change tells of its lineage: a snapshot's position, or its server."""
    return (item.lineage, item.origin.snapshot, item.origin.server)


def _event(item: Emitted, epoch: int) -> ChangeEvent:
    return ChangeEvent(
        table="inv.t",
        op=Op.READ if item.origin.snapshot else Op.UPDATE,
        before=None,
        after={"id": item.key, "v": item.value},
        key={"id": item.key},
        position=SourcePosition(epoch, *item.coords),
        committed_at_ms=None,
        origin=item.origin,
    )


SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)


@SETTINGS
@given(scenarios(modes=("server", "gtid")), st.integers(0, 2**32), st.integers(0, 3))
def test_with_server_identity_every_change_gets_its_lineages_epoch_everywhere(
    scenario: Scenario, seed: int, floor: int
) -> None:
    result = run(scenario, random.Random(seed), floor=floor)
    if scenario.forced:  # a partition read before its lineage's evidence was recorded
        assert result.cache == scenario.truth or result.holds
        return
    by_lineage: dict[int, set[int]] = {}
    for item, epoch in result.epochs:
        by_lineage.setdefault(item.lineage, set()).add(epoch)
    assert all(len(epochs) == 1 for epochs in by_lineage.values()), by_lineage
    ordered = [next(iter(by_lineage[lineage])) for lineage in sorted(by_lineage)]
    assert ordered == sorted(set(ordered)) and ordered[0] == floor
    assert result.cache == scenario.truth
    assert result.holds == []
    assert result.settling >= len(by_lineage) - 1  # every switch settles in ttl mode


@SETTINGS
@given(scenarios(), st.integers(0, 2**32))
def test_the_cache_ends_right_or_a_lineage_hold_says_it_cannot(
    scenario: Scenario, seed: int
) -> None:
    result = run(scenario, random.Random(seed))
    assert result.cache == scenario.truth or result.holds


@settings(SETTINGS, max_examples=50)
@given(scenarios(), st.integers(0, 2**32))
def test_without_detection_a_switch_to_lower_positions_leaves_stale_keys(
    scenario: Scenario, seed: int
) -> None:
    # Some key's last value comes from a later lineage's change to a key written before.
    last = {m.key: m for m in scenario.messages if m.value == scenario.truth[m.key]}
    assume(
        any(
            m.lineage > 0 and not m.origin.snapshot
            and any(o.key == m.key and o.lineage < m.lineage for o in scenario.messages)
            for m in last.values()
        )
    )  # fmt: skip
    result = run(scenario, random.Random(seed), detect=False)
    assert result.cache != scenario.truth
