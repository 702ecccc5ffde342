"""Coverage-guided fuzzing of the decoder and router with atheris (libFuzzer).

Any bytes must either decode (and route to a planned change, control record or
rejection) or raise a typed poison error naming the record; any other exception is a
crash that libFuzzer reports with the input that caused it.

An input is one byte choosing the topic, one whose low bits say whether a key and a
value are present (Kafka's nulls), then the key, a NUL byte, and the value. Run ``python -m tests.fuzz.decode_fuzz --seeds DIR`` to write the recorded
real events as seeds, then ``python -m tests.fuzz.decode_fuzz DIR -runs=100000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["cdc_cache"]):
    from cdc_cache.envelope import decode
    from cdc_cache.errors import PoisonMessage
    from cdc_cache.events import SourceRecord
    from cdc_cache.pipeline import Control, Planned, Rejected, route
    from cdc_cache.rules import parse_rules

from tests.unit.test_envelope import ALL, load
from tests.unit.test_routed_topics import every_routed_record
from tests.workload import RULES_YAML

RECORDED = [r.record for source, fmt in ALL for r in load(source, fmt)] + every_routed_record()
TOPICS = [*sorted({r.topic for r in RECORDED}), "x"]
RULES = parse_rules(RULES_YAML)  # inventory.stock, a table of the recorded events


def encode(record: SourceRecord) -> bytes:
    """The fuzzer input that stands for ``record`` (keys hold no NUL byte)."""
    present = (record.key is not None) | (record.value is not None) << 1
    head = bytes([TOPICS.index(record.topic), present])
    return head + (record.key or b"") + b"\0" + (record.value or b"")


def record_of(data: bytes) -> SourceRecord:
    """The record an input stands for (see :func:`encode`)."""
    topic = TOPICS[data[0] % len(TOPICS)] if data else TOPICS[0]
    present = data[1] if len(data) > 1 else 3
    key, _, value = data[2:].partition(b"\0")
    return SourceRecord(topic, 0, 7, key if present & 1 else None, value if present & 2 else None)


def one_input(data: bytes) -> None:
    """The property: decode raises nothing but typed poison, route raises nothing."""
    record = record_of(data)
    try:
        decode(record)
    except PoisonMessage as err:
        if err.record != record:
            msg = f"poison error without its record: {err!r}"
            raise AssertionError(msg) from err
    routed = route(record, RULES, 0, 1024)
    if not isinstance(routed, Planned | Control | Rejected):
        msg = f"route returned {routed!r}"
        raise AssertionError(msg)


def write_seeds(directory: Path) -> int:
    """Write every recorded real event as a seed input; returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(RECORDED):
        (directory / f"recorded-{index:04d}").write_bytes(encode(record))
    return len(RECORDED)


def main(argv: list[str]) -> None:
    """libFuzzer's command line; ``--seeds DIR`` writes the seed corpus instead."""
    if len(argv) == 3 and argv[1] == "--seeds":
        write_seeds(Path(argv[2]))
        return
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
