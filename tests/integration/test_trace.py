"""cdc-cache trace on real tansu and Redis (server and Cluster): one row's changes on a
two-partition topic, each op judged against the version the worker left, a change the
worker has not read shown as applied (exit 1) until the worker reads it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from bytewax.testing import cluster_main
from click.testing import CliRunner
from confluent_kafka import Message as KafkaMessage

from cdc_cache.cli import main
from cdc_cache.core.events import SourceRecord
from cdc_cache.plan.cache_ops import DeleteKey, SetRow
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.sink.encoding import version_of
from dataflows.config import FlowConfig
from dataflows.invalidation import build_flow
from tests.integration.topics import produce, unique_topic
from tests.workload import RULES_YAML, TABLE, Message, Workload

pytestmark = pytest.mark.integration

RULES = parse_rules(RULES_YAML)


def run_worker(bootstrap: str, redis_url: str, topic: str) -> None:
    """The worker's flow over the whole topic, from its start, until its end."""
    flow = build_flow(
        FlowConfig(
            rules=RULES,
            brokers=(bootstrap,),
            topics=(topic,),
            redis_url=redis_url,
            tail=False,
            continuity=False,
        )
    )
    cluster_main(flow, [], 0)


def newest_versions(messages: list[Message]) -> dict[str, str]:
    """The version each key holds after the worker applied ``messages`` (commit order)."""
    newest: dict[str, str] = {}
    for index, message in enumerate(messages):
        routed = route(SourceRecord(message.topic, 0, index, message.key, message.value), RULES)
        if isinstance(routed, Planned):
            for op in routed.ops:
                if isinstance(op, SetRow | DeleteKey):
                    newest[op.key] = max(newest.get(op.key, ""), version_of(op))
    return newest


def trace(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["trace", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, orjson.loads(result.stdout)


def test_trace_judges_each_change_of_a_row_against_the_cache_now(
    broker, redis_target, tmp_path: Path
):
    topic = unique_topic()
    broker.create_topics({topic: 2})
    workload = Workload(seed=5, topic=topic)
    applied = [m for tx in workload.transactions(60) for m in tx]
    produce(broker.bootstrap, applied)
    run_worker(broker.bootstrap, redis_target.url, topic)
    row_counts: dict[int, int] = {}
    for message in applied:
        row = orjson.loads(message.key)["id"]
        row_counts[row] = row_counts.get(row, 0) + (message.value is not None)
    row_id = max(workload.rows, key=lambda r: row_counts.get(r, 0))
    assert row_counts[row_id] >= 3, "the traced row should have several changes"
    late = workload._update([row_id])  # committed, not read by the worker yet
    where: list[tuple[int, int]] = []
    produce(broker.bootstrap, late, delivered=lambda _i, m: where.append(_at(m)))
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    common = ["--rules", str(rules), "--brokers", broker.bootstrap]
    common += ["--redis-url", redis_target.url, "--topic", topic]

    code, data = trace(*common, "--table", TABLE, "--key", f"id={row_id}")

    assert code == 1, "a change the cache does not hold yet fails the trace"
    assert data["key"] == {"id": str(row_id)} and data["scanned"] == len(applied) + 1
    assert len(data["changes"]) == row_counts[row_id] + 1
    newest = newest_versions(applied)
    ops = [(c, op) for c in data["changes"] for op in c["ops"] if op["action"] != "notify"]
    late_offset = where[0][1]
    for change, op in ops:
        if change["offset"] == late_offset:
            assert op["gate"] == "applied", op
    late_change = data["changes"][-1]
    assert late_change["offset"] == late_offset
    assert data["pending"] == len(late_change["ops"]) > 0
    # each earlier op: duplicate when it wrote the key's newest version, else stale
    routed = {
        (c["offset"]): route(
            SourceRecord(topic, c["partition"], c["offset"], m.key, m.value), RULES
        )
        for c, m in zip(
            data["changes"][:-1],
            [m for m in applied if m.value and orjson.loads(m.key)["id"] == row_id],
            strict=True,
        )
    }
    for change in data["changes"][:-1]:
        planned = routed[change["offset"]]
        assert isinstance(planned, Planned)
        key_ops = [o for o in planned.ops if isinstance(o, SetRow | DeleteKey)]
        wanted = ["duplicate" if version_of(o) == newest[o.key] else "stale" for o in key_ops]
        assert [o["gate"] for o in change["ops"] if o["action"] != "notify"] == wanted
    keys = {k["key"]: k for k in data["keys"]}
    stock = next(k for k in keys if k.startswith("stock:") and k in workload.expected_cache())
    assert keys[stock]["type"] == "string" and 0 < keys[stock]["ttl_ms"] <= 3_600_000
    assert keys[stock]["version"] == newest[stock]

    run_worker(broker.bootstrap, redis_target.url, topic)  # the worker reads the late change

    code, data = trace(*common, "--table", TABLE, "--key", f"id={row_id}")
    assert code == 0 and data["pending"] == 0
    assert {op["gate"] for op in data["changes"][-1]["ops"]} == {"duplicate"}
    keys = {k["key"]: k for k in data["keys"]}
    assert orjson.loads(keys[stock]["value"]) == workload.expected_cache()[stock]
    assert keys[stock]["holds"] == f"{topic}[{where[0][0]}]@{late_offset}"

    partition, offset = where[0]
    code, by_record = trace(*common, "--partition", str(partition), "--offset", str(offset))
    assert by_record["changes"] == data["changes"]  # the same row, found from its record
    assert [k["version"] for k in by_record["keys"]] == [k["version"] for k in data["keys"]]


def _at(message: KafkaMessage) -> tuple[int, int]:
    return message.partition() or 0, message.offset() or 0
