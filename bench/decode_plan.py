"""What decoding values costs on the hot path: ``route`` (decode, decode values, plan) per record.

Replays recorded real Debezium records (``tests/fixtures/debezium``) through
``cdc_cache.plan.route.route`` in a loop, with rules version 1 (values as Debezium ships
them) and version 2 (values decoded), on the same records:

* ``stock``: the inventory ``stock`` table (MariaDB, JSON with schemas): a narrow row with
  one logical type (``DATETIME(3)``) and a decimal string, every record wrapped in its
  schema, so the schema prefix is reused;
* ``values``: the values table of every common column type (MariaDB, precise decimals,
  JSON with schemas): 33 columns, 20 of them decoded;
* ``values-schemaless``: the same records without schemas, their types declared in the
  rules.

    .venv/bin/python bench/decode_plan.py [--rounds 5] [--seconds 1] [--out FILE]

Prints a Markdown table (µs per record, records/s, the cost of decoding) and writes the
numbers to ``--out`` (``bench/results/decode-plan.json``). Single-threaded, pure CPU: the
two versions run in alternating rounds of ``--seconds`` each and the best round of each
counts, so a load that comes and goes on a shared machine skews them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdc_cache.core.events import SourceRecord
from cdc_cache.plan.route import Planned, route
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import parse_rules

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "debezium" / "mariadb"

STOCK = """
{version}
tables:
  inventory.stock:
    keys:
      - key: "stock:{{sku_id}}:{{warehouse}}"
        fields: [sku_id, warehouse, qty, price, updated_at]
"""
VALUES = """
{version}
tables:
  vals.t:
    {types}
    keys:
      - key: "v:{{id}}"
      - key: "vd:{{d}}:{{id}}"
        fields: [id, d, dt, ts, amount]
"""
DECLARED = (
    "types: {flag: boolean, d: date, tm: time_us, tm3: time_us, tm6: time_us, "
    "dt: timestamp_ms, dt3: timestamp_ms, dt6: timestamp_us, ts: zoned_timestamp, "
    "ts6: zoned_timestamp, amount: decimal(4), price: decimal(2), whole: decimal(0), "
    "f: float32, bit1: boolean, bits: bits(5), g: geometry, pt: geometry, doc: json}"
)


def records(path: Path, table: str) -> list[SourceRecord]:
    """The row changes of ``table`` in a recording, as Kafka records."""
    out = []
    for offset, line in enumerate(path.read_text().splitlines()):
        doc = json.loads(line)
        if doc["value"] and doc["topic"].endswith(table) and '"op"' in doc["value"]:
            out.append(
                SourceRecord(doc["topic"], 0, offset, doc["key"].encode(), doc["value"].encode())
            )
    return out


def per_record_us(batch: list[SourceRecord], rules: Rules, seconds: float) -> float:
    """Mean µs of ``route`` per record, looping over ``batch`` for about ``seconds``."""
    for record in batch:  # warm the schema prefixes and the converters
        assert isinstance(route(record, rules), Planned), record
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for record in batch:
            route(record, rules)
        done += len(batch)
    return elapsed / done * 1e6


def cases() -> dict[str, tuple[list[SourceRecord], Callable[[int], Rules]]]:
    stock = records(FIXTURES / "schemas.jsonl", ".stock")
    typed = records(FIXTURES / "values" / "precise" / "schemas.jsonl", ".t")
    bare = records(FIXTURES / "values" / "precise" / "noschemas.jsonl", ".t")

    def stock_rules(version: int) -> Rules:
        return parse_rules(STOCK.format(version=f"version: {version}"))

    def values_rules(types: str) -> Callable[[int], Rules]:
        def make(version: int) -> Rules:
            declared = types if version == 2 else ""
            return parse_rules(VALUES.format(version=f"version: {version}", types=declared))

        return make

    return {
        "stock": (stock, stock_rules),
        "values": (typed, values_rules("types: {flag: boolean, doc: json}")),
        "values-schemaless": (bare, values_rules(DECLARED)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per case")
    parser.add_argument("--seconds", type=float, default=1.0, help="per round and version")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/decode-plan.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    print("| records | version 1 (wire) | version 2 (decoded) | decoding costs |")
    print("|---|---|---|---|")
    for name, (batch, rules) in cases().items():
        versions = rules(1), rules(2)
        rounds = [
            [per_record_us(batch, version, args.seconds) for version in versions]
            for _ in range(args.rounds)
        ]
        wire, natural = (min(column) for column in zip(*rounds, strict=True))
        results[name] = {
            "records": len(batch),
            "wire_us": round(wire, 2),
            "natural_us": round(natural, 2),
            "wire_per_s": round(1e6 / wire),
            "natural_per_s": round(1e6 / natural),
        }
        print(
            f"| {name} ({len(batch)}) | {wire:.1f} µs ({1e6 / wire:,.0f}/s) | "
            f"{natural:.1f} µs ({1e6 / natural:,.0f}/s) | +{natural - wire:.1f} µs "
            f"(+{(natural / wire - 1) * 100:.0f} %) |"
        )
    results["machine"] = {
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
    }
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
