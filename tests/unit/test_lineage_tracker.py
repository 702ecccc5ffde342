"""The dataflow's side of lineage detection: sessions, the registry, holds, what it shows."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from cdc_cache.app.load import load_settings
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.events import ChangeEvent, Op, Origin, SourceRecord
from cdc_cache.core.positions import SourcePosition
from cdc_cache.lineage.model import Limits
from cdc_cache.lineage.tracker import LineageConfig, LineageTracker, source_of
from cdc_cache.mode.controller import Cause
from cdc_cache.mode.holds import Holds
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from tests.lineage_fakes import MemoryRegistry
from tests.workload import RULES_YAML, Workload

TOPIC = "db.inv.t"


def tracker(registry: MemoryRegistry, holds: Holds | None = None, **config: Any) -> LineageTracker:
    return LineageTracker(lambda: registry, holds or Holds(), LineageConfig(**config))  # type: ignore[arg-type,return-value]


def judge(tracker: LineageTracker, *changes: tuple[int, int, int, Origin]) -> list[int]:
    """(offset, file, pos, origin) changes on partition 0; their epochs."""
    return judge_on(tracker, 0, *changes)


def _event(file: int, pos: int, origin: Origin) -> ChangeEvent:
    return ChangeEvent("inv.t", Op.UPDATE, None, {"id": 1}, {"id": 1},
                       SourcePosition(0, file, pos, 0), None, origin=origin)  # fmt: skip


S1, S2, SNAP = Origin("server:1"), Origin("server:2"), Origin(snapshot=True)


def test_source_of_a_topic_is_its_prefix() -> None:
    assert source_of("dbserver1.inventory.stock") == "dbserver1"
    assert source_of("a.b.c.d") == "a.b"
    assert source_of("routed") == "routed"


def test_a_switch_is_registered_once_logged_once_and_settles_in_ttl_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, holds = MemoryRegistry(), Holds()
    first, second = (tracker(registry, holds, settle_s=120) for _ in range(2))
    assert judge(first, (0, 9, 100, S1), (1, 2, 4, SNAP)) == [0, 1]
    caplog.clear()
    with caplog.at_level(logging.INFO, "cdc_cache.lineage"):
        records = [SourceRecord(TOPIC, 1, 0, b"k", b"v"), SourceRecord(TOPIC, 1, 1, b"k", b"v")]
        session = second.session(records)
        assert session.epoch_of(records[0], _event(8, 50, S1)) == 0
        assert session.epoch_of(records[1], _event(2, 9, S2)) == 1
        session.close()
    assert [r.getMessage() for r in caplog.records if r.name == "cdc_cache.lineage"] == [
        "partition first read after a source lineage switch starts in its lineage",
        "partition follows the source's lineage switch",
    ]
    assert [(h.cause, "ttl mode for 120s" in h.reason) for h in holds.active()] == [
        (Cause.LINEAGE, True)
    ]
    assert not holds.lasting(Cause.LINEAGE)  # settling is expected: /readyz stays ready
    view = first.view()["sources"]["db"]
    assert view["epochs"] == {f"{TOPIC}[0]": 1} and view["last_switch"]["to_epoch"] == 1
    assert view["last_switch"]["from_position"] == "binlog 9:100#0"


def test_a_partition_that_cannot_tell_is_held_shown_and_released() -> None:
    registry, holds = MemoryRegistry(), Holds()
    none = Origin()
    first = tracker(registry, holds, limits=Limits(rewind_files=1))
    assert judge(first, (0, 9, 100, none), (1, 3, 5, none)) == [0, 0]
    assert holds.lasting(Cause.LINEAGE)
    assert "no server identity" in first.view()["sources"]["db"]["held"][f"{TOPIC}[0]"]
    # A restarted process finds the hold in the partition's recorded state.
    restarted_holds = Holds()
    restarted = tracker(registry, restarted_holds)
    assert judge(restarted, (2, 5, 1, none)) == [0]
    assert restarted_holds.lasting(Cause.LINEAGE)
    assert judge(restarted, (3, 9, 200, none)) == [0]  # past the newest before the rewind
    assert not restarted_holds.lasting(Cause.LINEAGE)


def test_a_snapshot_read_delivered_again_is_counted_and_neither_switches_nor_settles(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The snapshot's read again after later changes (a TRUNCATE among them, say): it keeps
    # the epoch, so it is stale at the Redis gate; the cache stays in cdc mode.
    registry, holds = MemoryRegistry(), Holds()
    labels = {"source": "db", "verdict": "resent"}
    counted = REGISTRY.get_sample_value("cdc_cache_lineage_verdicts_total", labels) or 0
    with caplog.at_level(logging.INFO, "cdc_cache.lineage"):
        epochs = judge(tracker(registry, holds), (0, 1, 50, SNAP), (1, 1, 90, S1), (2, 1, 50, SNAP))
    assert epochs == [0, 0, 0]
    assert not holds.active() and registry.sources["db"]["next"] == {}
    assert not [r for r in caplog.records if "switch" in r.getMessage()]
    assert REGISTRY.get_sample_value("cdc_cache_lineage_verdicts_total", labels) == counted + 1


def test_raising_source_epoch_moves_unjudged_changes_to_it_and_replays_keep_theirs() -> None:
    registry, holds = MemoryRegistry(), Holds()
    none = Origin()
    assert judge(tracker(registry, holds), (0, 9, 100, none), (1, 3, 5, none)) == [0, 0]
    raised = tracker(registry, holds, floor=4)
    assert judge(raised, (0, 9, 100, none), (1, 3, 5, none), (2, 3, 9, none)) == [0, 0, 4]
    assert not holds.lasting(Cause.LINEAGE)
    assert judge(tracker(registry, Holds(), floor=4), (3, 3, 20, SNAP)) == [4]


def test_a_partition_never_judged_starts_in_the_sources_first_lineage() -> None:
    registry = MemoryRegistry()
    assert judge(tracker(registry, floor=2), (0, 9, 100, S1)) == [2]
    # A later process reads another partition from its start: the first lineage, then it
    # follows the switch the first partition registered.
    other = tracker(registry, floor=2)
    judge(tracker(registry, floor=2), (1, 2, 1, SNAP))
    records = [SourceRecord(TOPIC, 5, 0, b"k", b"v"), SourceRecord(TOPIC, 5, 1, b"k", b"v")]
    session = other.session(records)
    assert session.epoch_of(records[0], _event(9, 50, S1)) == 2
    assert session.epoch_of(records[1], _event(2, 3, SNAP)) == 3
    session.close()


def test_routed_changes_get_their_lineages_epoch_in_their_positions() -> None:
    rules = parse_rules(RULES_YAML)
    workload = Workload(seed=3, topic=TOPIC)
    messages = [m for tx in workload.transactions(20) for m in tx]
    messages += workload.failover(server_id=2, binlog_file=1)
    records = [SourceRecord(TOPIC, 0, i, m.key, m.value) for i, m in enumerate(messages)]
    session = tracker(MemoryRegistry()).session(records)
    routed = [route(r, rules, session.hint(r), epoch_of=session.epoch_of) for r in records]
    session.close()
    epochs = [
        (orjson.loads(r.record.value or b"{}")["op"], r.event.position.epoch)
        for r in routed if isinstance(r, Planned)
    ]  # fmt: skip
    assert {e for op, e in epochs if op != "r"} == {0}
    assert {e for op, e in epochs if op == "r"} == {1}
    ops = [op for r in routed if isinstance(r, Planned) and r.event.op is Op.READ for op in r.ops]
    assert ops and all(
        getattr(op, "position", None) is None or op.position.epoch == 1 for op in ops
    )


def test_the_settle_time_must_outlast_the_fallback_ttl(tmp_path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    with pytest.raises(ConfigError, match="lineage_settle_s"):
        load_settings(rules=rules, topics=["t"], fallback_ttl_s=60, lineage_settle_s=30)


def test_a_recreated_topic_read_from_its_start_is_judged_not_replayed() -> None:
    registry = MemoryRegistry()
    first = tracker(registry)
    assert judge(first, (100, 9, 100, S1), (101, 2, 4, SNAP)) == [0, 1]
    # Offsets 0.. of the old topic would be replays with their recorded epochs...
    assert judge(tracker(registry), (5, 3, 1, S2)) == [0]
    # ...but once the operator has the new topic read from its start, they are new.
    fresh = tracker(registry)
    fresh.restarted(TOPIC, 0)
    assert judge(fresh, (0, 2, 9, SNAP), (1, 2, 20, S2)) == [1, 1]


def test_the_registrys_trouble_is_raised_never_taken_for_the_messages_poison() -> None:
    from cdc_cache.core.errors import StopRequested

    message = Workload(seed=4, topic=TOPIC).transactions(1)[0][0]
    record = SourceRecord(TOPIC, 0, 0, message.key, message.value)

    def stopping(record: SourceRecord, event: ChangeEvent) -> int:
        raise StopRequested("stop requested while Redis was unavailable")

    with pytest.raises(StopRequested):
        route(record, parse_rules(RULES_YAML), epoch_of=stopping)


def test_a_partition_first_read_after_a_switch_starts_in_the_lineage_its_evidence_shows() -> None:
    registry, holds = MemoryRegistry(), Holds()
    first = tracker(registry, holds)
    assert judge(first, (0, 9, 4, SNAP), (1, 9, 100, S1), (2, 2, 4, SNAP), (3, 2, 9, S2)) == [
        0, 0, 1, 1
    ]  # fmt: skip
    records = [SourceRecord(TOPIC, 3, offset, b"k", b"v") for offset in range(3)]
    session = tracker(registry, holds).session(records)
    assert session.epoch_of(records[0], _event(2, 50, S2)) == 1  # not the first lineage's 0
    # Late changes of the old lineage (its server below, a read of its snapshot): the old
    # lineage's, as the source's partitions recorded it, not a switch or a re-snapshot.
    assert session.epoch_of(records[1], _event(2, 10, S1)) == 0
    assert session.epoch_of(records[2], _event(9, 4, SNAP)) == 0
    session.close()
    assert not holds.lasting(Cause.LINEAGE) and registry.sources["db"]["latest"] == 1


def test_a_partition_first_read_after_a_switch_that_nothing_places_is_held_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No server identity (PostgreSQL, flattened topics): the switch was a new snapshot.
    registry, holds = MemoryRegistry(), Holds()
    none = Origin()
    assert judge(tracker(registry, holds), (0, 9, 100, none), (1, 2, 4, SNAP)) == [0, 1]
    labels = {"source": "db", "verdict": "unknown"}
    counted = REGISTRY.get_sample_value("cdc_cache_lineage_verdicts_total", labels) or 0
    reader = tracker(registry, holds)
    records = [SourceRecord(TOPIC, 3, 0, b"k", b"v")]
    with caplog.at_level(logging.INFO, "cdc_cache.lineage"):
        session = reader.session(records)
        assert session.epoch_of(records[0], _event(2, 50, none)) == 0
        session.close()
    assert holds.lasting(Cause.LINEAGE)
    held = reader.view()["sources"]["db"]["held"][f"{TOPIC}[3]"]
    assert "first, after the source switched lineage" in held
    assert REGISTRY.get_sample_value("cdc_cache_lineage_verdicts_total", labels) == counted + 1
    assert "cannot tell its lineage" in caplog.text
    # A restarted process finds the hold; it lasts whatever the positions do...
    restarted_holds = Holds()
    restarted = tracker(registry, restarted_holds)
    assert judge_on(restarted, 3, (1, 9, 500, none)) == [0]
    assert restarted_holds.lasting(Cause.LINEAGE)
    # ...until the operator raises source_epoch above every lineage.
    raised = tracker(registry, restarted_holds, floor=2)
    assert judge_on(raised, 3, (2, 9, 600, none)) == [2]
    assert not restarted_holds.lasting(Cause.LINEAGE)


def test_a_partition_first_read_before_any_switch_costs_no_lineage_lookup() -> None:
    registry = MemoryRegistry()
    judge(tracker(registry), (0, 9, 100, S1))
    registry.states = None  # type: ignore[assignment]  # never called
    assert judge_on(tracker(registry), 4, (0, 9, 50, S1)) == [0]


def judge_on(
    tracker: LineageTracker, partition: int, *changes: tuple[int, int, int, Origin]
) -> list[int]:
    """(offset, file, pos, origin) changes on ``partition``; their epochs."""
    records = [SourceRecord(TOPIC, partition, offset, b"k", b"v") for offset, *_ in changes]
    session = tracker.session(records)
    epochs = [
        session.epoch_of(record, _event(file, pos, origin))
        for record, (_, file, pos, origin) in zip(records, changes, strict=True)
    ]
    session.close()
    return epochs
