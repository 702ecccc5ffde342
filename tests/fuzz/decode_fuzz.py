"""Coverage-guided fuzzing of the decoder, the planner and the dead-letter path (atheris).

Any bytes must either decode (and route to a planned change, control record or
rejection) or raise a typed poison error naming the record, and a rejection must become
exactly one dead letter that can be written; any other exception is a crash that
libFuzzer reports with the input that caused it. Besides the recorded real events, the
seeds hold them with a column or the key nested up to the parser's limit, so mutations
start at the depths where the encoder and Python's recursion give up.

An input is one byte choosing the topic, one whose low bits say whether a key and a
value are present (Kafka's nulls), then the key, a NUL byte, and the value. Run
``python -m tests.fuzz.decode_fuzz --seeds DIR`` to write the seeds, then
``python -m tests.fuzz.decode_fuzz DIR -runs=100000``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import atheris
import orjson

with atheris.instrument_imports(include=["cdc_cache"]):
    from cdc_cache.core.events import SourceRecord
    from tests.hostile import through_the_worker_path  # imports the path it checks

from tests.unit.test_envelope import ALL, load
from tests.unit.test_routed_topics import every_routed_record

RECORDED = [r.record for source, fmt in ALL for r in load(source, fmt)] + every_routed_record()
TOPICS = [*sorted({r.topic for r in RECORDED}), "x"]
DEPTHS = (255, 1000, 1024)
_PLACEHOLDER = b'"@@deep@@"'


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
    """The property of :func:`tests.hostile.through_the_worker_path`, for any input."""
    through_the_worker_path(record_of(data))


def deep_variants(record: SourceRecord) -> list[SourceRecord]:
    """``record`` with its first row column, then its key, nested at each of DEPTHS."""
    out = []
    doc = orjson.loads(record.value or b"null")
    row = doc.get("after") if isinstance(doc, dict) else None
    if isinstance(row, dict) and row:
        row[next(iter(row))] = "@@deep@@"
        template = orjson.dumps(doc)
        out += [replace(record, value=template.replace(_PLACEHOLDER, _lists(d))) for d in DEPTHS]
    if record.key is not None:
        out += [replace(record, key=b'{"id": ' + _lists(d) + b"}") for d in DEPTHS]
    return out


def _lists(depth: int) -> bytes:
    """A value nested ``depth`` levels deep in two bytes a level (inputs stay short)."""
    return b"[" * depth + b"0" + b"]" * depth


def seeds() -> list[SourceRecord]:
    """The recorded events, and deep variants of the short change events among them."""
    changes = [r for r in RECORDED if b'"op"' in (r.value or b"") and len(r.value or b"") < 1200]
    return RECORDED + [deep for record in changes[:8] for deep in deep_variants(record)]


def write_seeds(directory: Path) -> int:
    """Write every seed input; returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    chosen = seeds()
    for index, record in enumerate(chosen):
        (directory / f"seed-{index:04d}").write_bytes(encode(record))
    return len(chosen)


def main(argv: list[str]) -> None:
    """libFuzzer's command line; ``--seeds DIR`` writes the seed corpus instead."""
    if len(argv) == 3 and argv[1] == "--seeds":
        write_seeds(Path(argv[2]))
        return
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
