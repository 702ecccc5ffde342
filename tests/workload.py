"""A random inventory workload as Debezium MySQL envelopes, plus the cache state it implies.

Shaped like the recorded real events (JSON without schemas, binlog source block): inserts,
updates, rows moving between warehouses, deletes followed by tombstones, and statements
that change several rows (shared ``pos``, ``row`` 0..n).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

TABLE = "inventory.stock"
TOPIC = "dbserver1.inventory.stock"  # default; tests use their own
WAREHOUSES = ("north", "south", "east", "west", "a:b {c}*")

RULES_YAML = """
defaults: {safety_ttl: 1h, tombstone_ttl: 30m}
tables:
  inventory.stock:
    columns: [id, sku_id, warehouse, qty, note]
    watch: [id, sku_id, warehouse, qty]
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [id, sku_id, warehouse, qty]
      - key: "sku:{sku_id}:availability"
        action: delete
"""


def rules_for(db: str) -> str:
    """:data:`RULES_YAML` for the ``stock`` table of database ``db``."""
    return RULES_YAML.replace("inventory.stock", f"{db}.stock")


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None


@dataclass
class Workload:
    """Generates changes in commit order; ``rows`` is the table as the database has it."""

    seed: int = 0
    topic: str = TOPIC
    db: str = "inventory"  # the source database the messages name
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    pos: int = 4
    binlog_file: int = 1
    next_id: int = 1
    ts_ms: int = 1_700_000_000_000
    server_id: int = 1

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.seed)

    def transactions(self, count: int) -> list[list[Message]]:
        """``count`` transactions; each is the messages one commit produces."""
        return [self._transaction() for _ in range(count)]

    def _transaction(self) -> list[Message]:
        self.pos += self.rnd.randint(100, 400)
        self.ts_ms += self.rnd.randint(1, 50)
        if self.rnd.random() < 0.01:
            self.binlog_file += 1
            self.pos = 4
        choice = self.rnd.random()
        if choice < 0.3 or len(self.rows) < 5:
            return self._insert()
        if choice < 0.75:
            return self._update(
                self.rnd.sample(sorted(self.rows), k=min(len(self.rows), self.rnd.randint(1, 3)))
            )
        if choice < 0.9:
            return self._update([self.rnd.choice(sorted(self.rows))], move=True)
        return self._delete(self.rnd.choice(sorted(self.rows)))

    def _free_slot(self, row_id: int | None) -> tuple[int, str] | None:
        taken = {(r["sku_id"], r["warehouse"]) for i, r in self.rows.items() if i != row_id}
        for _ in range(20):
            slot = (self.rnd.randint(1, 60), self.rnd.choice(WAREHOUSES))
            if slot not in taken:
                return slot
        return None

    def _insert(self) -> list[Message]:
        slot = self._free_slot(None)
        if slot is None:
            return self._delete(self.rnd.choice(sorted(self.rows)))
        row = {
            "id": self.next_id,
            "sku_id": slot[0],
            "warehouse": slot[1],
            "qty": self.rnd.randint(0, 100),
            "note": "new",
        }
        self.next_id += 1
        self.rows[row["id"]] = row
        return [self._message("c", None, row, 0)]

    def _update(self, ids: list[int], move: bool = False) -> list[Message]:
        out = []
        for index, row_id in enumerate(ids):  # one statement: shared pos, rows 0..n
            before = self.rows[row_id]
            after = dict(before)
            if move and (slot := self._free_slot(row_id)) is not None:
                after["sku_id"], after["warehouse"] = slot
            elif self.rnd.random() < 0.2:
                after["note"] = f"note {self.pos}"  # an unwatched column only
            else:
                after["qty"] = self.rnd.randint(0, 100)
            self.rows[row_id] = after
            out.append(self._message("u", before, after, index))
        return out

    def _delete(self, row_id: int) -> list[Message]:
        before = self.rows.pop(row_id)
        return [
            self._message("d", before, None, 0),
            Message(self.topic, orjson.dumps({"id": row_id}), None),
        ]

    def failover(self, server_id: int, binlog_file: int) -> list[Message]:
        """The source fails over: a promoted replica (``server_id``) writes its own binlog
        numbering from ``binlog_file``, and the connector, started on it with fresh offsets,
        first snapshots every row at that log's position (snapshot reads carry server id 0)."""
        self.server_id, self.binlog_file, self.pos = server_id, binlog_file, 4
        self.pos += self.rnd.randint(100, 400)
        return [self._message("r", None, row, 0) for _, row in sorted(self.rows.items())]

    def truncate(self) -> Message:
        """TRUNCATE TABLE: every row gone, in one event without a key."""
        self.pos += self.rnd.randint(100, 400)
        self.ts_ms += self.rnd.randint(1, 50)
        self.rows.clear()
        return self._message("t", None, None, 0)

    def _message(self, op: str, before: Any, after: Any, row: int) -> Message:
        snapshot = op == "r"
        value = {
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": self.ts_ms + 3,
            "source": {
                "version": "3.6.3.Final",
                "connector": "mysql",
                "name": "dbserver1",
                "ts_ms": self.ts_ms,
                "snapshot": "true" if snapshot else "false",
                "db": self.db,
                "table": "stock",
                "server_id": 0 if snapshot else self.server_id,
                "file": f"mysql-bin.{self.binlog_file:06d}",
                "pos": self.pos,
                "row": row,
                "thread": 7,
                "query": None,
            },
            "transaction": None,
        }
        row_key = None if op == "t" else orjson.dumps({"id": (after or before)["id"]})
        return Message(self.topic, row_key, orjson.dumps(value))

    def expected_cache(self) -> dict[str, dict[str, Any]]:
        """The ``stock:`` keys and values the rules derive from the current table."""
        from cdc_cache.core.keys import escape_value

        return {
            f"stock:{escape_value(r['sku_id'])}:{escape_value(r['warehouse'])}": {
                k: r[k] for k in ("id", "sku_id", "warehouse", "qty")
            }
            for r in self.rows.values()
        }


def flattened(messages: list[Message], *, rewrite: bool) -> list[Message]:
    """``messages`` as the ``ExtractNewRecordState`` SMT writes them, with the recordings'
    ``add.fields``: the row (a delete's before image), ``__deleted`` ("true" for a delete,
    else "false") in rewrite mode, then the added fields. In ``tombstone`` mode (not
    ``rewrite``) a delete leaves only its tombstone. TRUNCATE records are dropped, as the
    SMT drops them."""
    out = []
    for message in messages:
        if message.value is None:
            out.append(message)
            continue
        envelope = orjson.loads(message.value)
        op, source = envelope["op"], envelope["source"]
        if op == "t" or (op == "d" and not rewrite):
            continue
        row = dict(envelope["before"] if op == "d" else envelope["after"])
        if rewrite:
            row["__deleted"] = "true" if op == "d" else "false"
        row.update(
            {
                "__op": op, "__source_ts_ms": source["ts_ms"], "__ts_ms": envelope["ts_ms"],
                "__connector": source["connector"], "__db": source["db"],
                "__table": source["table"], "__snapshot": source["snapshot"],
                "__file": source["file"], "__pos": source["pos"], "__row": source["row"],
            }
        )  # fmt: skip
        out.append(Message(message.topic, message.key, orjson.dumps(row)))
    return out


# A table whose rows a migration may leave unrenderable (tests of failed changes).
ITEMS_RULES_YAML = """\
defaults: {tombstone_ttl: 10m}
tables:
  inventory.items:
    keys:
      - key: "item:{id}"
        fields: [id, name, price]
      - key: "itemname:{name}"
        action: delete
"""

NOTIFY_RULES_YAML = """
tables:
  inventory.stock:
    watch: [sku_id, warehouse, qty]
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [sku_id, warehouse, qty]
      - key: "sku:{sku_id}:availability"
        action: delete
    notify:
      channel: "inventory:{warehouse}"
      fields: [sku_id, qty]
      maxlen: 50
"""
