"""Hostile inputs and checks shared by the unit, fuzz and integration tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from cdc_cache.core.errors import PoisonMessage
from cdc_cache.core.events import SourceRecord
from cdc_cache.dlq.entries import Failure, entry_id
from cdc_cache.dlq.rejects import Rejects
from cdc_cache.plan.route import Control, Planned, Rejected, route
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.source.envelope import decode

# The recorded events' tables, with every plan path a row value reaches: key templates,
# JSON and hash values, whole-row notifications, sensitive columns.
FUZZ_RULES: Rules = parse_rules("""
tables:
  inventory.stock:
    sensitive: [note]
    watch: [sku_id, warehouse, qty, price]
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [sku_id, warehouse, qty, price]
      - key: "sku:{sku_id}:availability"
        action: delete
  inventory.products:
    sensitive: [description]
    keys:
      - key: "product:{id}:{name}"
        format: hash
    notify:
      channel: "products:{color}"
""")


def nested(depth: int, leaf: bytes = b"0") -> bytes:
    """A JSON value nested exactly ``depth`` levels deep, lists and objects alternating.

    Built as text: Python's own encoder would recurse past its limit on such values.
    """
    opens = "".join('{"a":' if level % 2 else "[" for level in range(depth))
    closes = "".join("}" if level % 2 else "]" for level in reversed(range(depth)))
    return opens.encode() + leaf + closes.encode()


class KeptDeadLetters:
    """Dead letters as the DLQ topic gets them (encoded, so an unwritable one raises)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def write(self, entries: Sequence[dict[str, Any]]) -> None:
        self.entries.extend(orjson.loads(orjson.dumps(entry)) for entry in entries)


def through_the_worker_path(record: SourceRecord, rules: Rules = FUZZ_RULES) -> None:
    """The property every message must hold, whatever its bytes.

    Decode raises nothing but typed poison naming the record; decode and plan together
    (``route``) raise nothing; a rejection becomes exactly one written dead letter.
    """
    try:
        decode(record)
    except PoisonMessage as err:
        if err.record != record:
            msg = f"poison error without its record: {err!r}"
            raise AssertionError(msg) from err
    routed = route(record, rules, 0, 1024)
    if isinstance(routed, Planned | Control):
        return
    if not isinstance(routed, Rejected):
        msg = f"route returned {routed!r}"
        raise AssertionError(msg)
    kept = KeptDeadLetters()
    Rejects(rules, kept).report([Failure(routed.error, routed.table, routed.event)])
    (entry,) = kept.entries
    if entry["id"] != entry_id(record.topic, record.partition, record.offset, routed.error.kind):
        msg = f"dead letter under another id: {entry['id']}"
        raise AssertionError(msg)
