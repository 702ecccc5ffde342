"""The Kafka source's CPU per record in the dataflow thread: Bytewax's partition against ours.

    python bench/source_ab.py [--records 100000] [--rounds 3] [--out FILE.json]

On one tansu broker holding ``--records`` records of the workload's size, drains one
partition to its end, alternately with Bytewax 0.21.1's ``KafkaSource`` partition plus the
conversion the flow made of each ``KafkaSourceMessage`` (``bytewax``) and with
``dataflows.kafka`` (``ours``), both ending with one ``SourceRecord`` per record. It
counts the calling thread's CPU time only (``time.thread_time``): librdkafka's fetching
runs in its own threads either way, the dataflow thread pays for what is measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bytewax.connectors.kafka import KafkaError
from bytewax.connectors.kafka import KafkaSource as BytewaxKafkaSource
from confluent_kafka import Producer

from cdc_cache.core.events import SourceRecord
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.process import free_port
from dataflows.kafka import KafkaSource

TOPIC = "bench.inventory.source"
VALUE_BYTES = 1700  # a schema-wrapped Debezium change of the workload is ~1.7 KB
BATCH = 1000


def fill(bootstrap: str, records: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    value = bytes(range(256)) * (VALUE_BYTES // 256) + b"x" * (VALUE_BYTES % 256)
    for i in range(records):
        while True:
            try:
                producer.produce(TOPIC, key=b"%d" % i, value=value, partition=0)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(300):
        msg = "the broker did not acknowledge every record"
        raise SystemExit(msg)


def bytewax_records(bootstrap: str) -> Callable[[], int]:
    """Bytewax's partition, each message converted as the flow converted it before."""

    def drain() -> int:
        source = BytewaxKafkaSource([bootstrap], [TOPIC], tail=False, batch_size=BATCH)
        part = source.build_part("bench", f"0-{TOPIC}", None)
        count = 0
        try:
            while True:
                records = [
                    SourceRecord(
                        m.topic or "", m.partition or 0, m.offset or 0, m.key, m.value,
                        m.timestamp[1] if m.timestamp else None,
                    )
                    for m in part.next_batch()
                    if not isinstance(m, KafkaError)
                ]  # fmt: skip
                count += len(records)
        except StopIteration:
            return count
        finally:
            part.close()

    return drain


def our_records(bootstrap: str) -> Callable[[], int]:
    def drain() -> int:
        source = KafkaSource(
            [bootstrap], [TOPIC], consumer={}, admin={}, tail=False, batch_size=BATCH
        )
        part = source.build_part("bench", f"0-{TOPIC}", None)
        count = 0
        try:
            while True:
                batch = part.next_batch()
                count += sum(1 for item in batch if type(item) is SourceRecord)
        except StopIteration:
            return count
        finally:
            part.close()

    return drain


def measure(drain: Callable[[], int], records: int) -> dict[str, float]:
    started, cpu = time.monotonic(), time.thread_time()
    count = drain()
    cpu, wall = time.thread_time() - cpu, time.monotonic() - started
    if count != records:
        msg = f"drained {count} records of {records}"
        raise SystemExit(msg)
    return {"cpu_us_per_record": round(cpu / records * 1e6, 2), "seconds": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="source-ab-") as home:
        broker = Broker(Path(home), free_port())
        broker.start()
        try:
            broker.create_topics({TOPIC: 1})
            fill(broker.bootstrap, args.records)
            sides = {
                "bytewax": bytewax_records(broker.bootstrap),
                "ours": our_records(broker.bootstrap),
            }
            runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
            for _ in range(args.rounds):
                for side, drain in sides.items():
                    runs[side].append(measure(drain, args.records))
        finally:
            broker.stop()
    result: dict[str, Any] = {
        "records": args.records,
        "runs": runs,
        "median_cpu_us_per_record": {
            side: statistics.median(r["cpu_us_per_record"] for r in rs) for side, rs in runs.items()
        },
    }
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
