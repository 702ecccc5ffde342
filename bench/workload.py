"""Debezium MySQL change events for the throughput benchmark, and the cache state they imply.

Shaped like the recorded real events in ``tests/fixtures/debezium/mariadb``: the same
envelope (``before``, ``after``, ``source`` with the recorded fields, ``transaction``,
``op``, ``ts_ms/us/ns``), the recorded ``schema`` blocks of ``inventory.products`` and
``inventory.stock`` (every other event is wrapped as ``{"schema", "payload"}``, like a
connector with ``schemas.enable=true``), deletes followed by tombstones. Three tables; 80 %
of the changes hit a hot 2 % of each table's keys, the rest spread over all of them; the
op mix is inserts for absent rows and, for present ones, mostly updates (some touching
only an unwatched column) and some deletes.

The expected cache state is computed independently of the product's planner, from the
rows as they end up: the correctness guard compares Redis against it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/debezium/mariadb/schemas.jsonl"
DB = "inventory"
WAREHOUSES = ("north", "south", "east", "west")
STATUSES = ("new", "paid", "packed", "shipped", "returned")

RULES_YAML = """
defaults: {safety_ttl: 24h, tombstone_ttl: 1h}
tables:
  inventory.products:
    watch: [id, name, price]
    keys:
      - key: "product:{id}"
        fields: [id, name, price]
  inventory.stock:
    watch: [sku_id, warehouse, qty, price]
    keys:
      - key: "stock:{sku_id}:{warehouse}"
        fields: [sku_id, warehouse, qty, price]
      - key: "sku:{sku_id}:availability"
        action: delete
  inventory.orders:
    keys:
      - key: "order:{id}"
        fields: [id, customer_id, status, total]
        format: hash
  inventory.probes:
    keys:
      - key: "probe:{id}"
        fields: [id, sent_us]
"""
PROBE_PREFIX = "probe:"


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the workload: its key space and how a row maps to its cache key."""

    name: str
    keys: int  # size of the primary key space
    weight: float  # share of the changes


TABLES = (
    Table("products", 20_000, 0.25),
    Table("stock", 60_000, 0.45),
    Table("orders", 200_000, 0.30),
)


def _recorded_schemas() -> dict[str, tuple[bytes, bytes]]:
    """Value and key schema blocks per table, as the connector recorded them."""
    found: dict[str, tuple[bytes, bytes]] = {}
    for line in FIXTURE.read_bytes().splitlines():
        record = orjson.loads(line)
        if not (record.get("value") and record.get("key")) or not record["topic"].startswith(
            "dbz.inventory."
        ):
            continue
        value, key = orjson.loads(record["value"]), orjson.loads(record["key"])
        if "op" in value.get("payload", {}):
            found.setdefault(
                record["topic"].rsplit(".", 1)[1],
                (orjson.dumps(value["schema"]), orjson.dumps(key["schema"])),
            )
    # orders: the products schema with the orders columns, in the same recorded shape.
    products_value, products_key = found["products"]
    doc = orjson.loads(products_value)
    columns = [("int32", "id"), ("int32", "customer_id"), ("string", "status"),
               ("string", "total"), ("int64", "updated_at")]  # fmt: skip
    fields = [{"type": t, "optional": n != "id", "field": n} for t, n in columns]
    for image in doc["fields"][:2]:
        image["fields"] = fields
        image["name"] = "dbz.inventory.orders.Value"
    doc["name"] = "dbz.inventory.orders.Envelope"
    key = orjson.loads(products_key)
    key["name"] = "dbz.inventory.orders.Key"
    found["orders"] = (orjson.dumps(doc), orjson.dumps(key))
    probe_key = {**key, "name": "dbz.inventory.probes.Key"}
    found["probes"] = (orjson.dumps(doc), orjson.dumps(probe_key))
    return found


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka record: topic, key, value (None for a tombstone)."""

    topic: str
    key: bytes
    value: bytes | None


@dataclass
class Generator:
    """Changes in commit order plus the rows as the database holds them afterwards."""

    prefix: str
    seed: int = 0
    hot_share: float = 0.8
    hot_keys: float = 0.02
    rows: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    ever: dict[str, set[int]] = field(default_factory=dict)
    pos: int = 4
    file: int = 1
    ts_ms: int = 1_795_239_448_000
    changes: int = 0  # records of row changes written (probes included)
    deletes: int = 0  # deletes, each followed by a tombstone record

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.seed)
        self.schemas = _recorded_schemas()
        self.rows = {t.name: {} for t in TABLES}
        self.ever = {t.name: set() for t in TABLES}
        self._names = [t.name for t in TABLES]
        self._weights = [t.weight for t in TABLES]
        self._tables = {t.name: t for t in TABLES}

    def topic(self, table: str) -> str:
        """``<prefix>.inventory.<table>``, the name Debezium gives the table's topic."""
        return f"{self.prefix}.{DB}.{table}"

    def messages(self, count: int) -> Iterator[Message]:
        """``count`` changes (a delete also yields its tombstone, not counted)."""
        for _ in range(count):
            yield from self.change()

    def change(self) -> list[Message]:
        """One committed row change: its record, plus a tombstone after a delete."""
        rnd = self.rnd
        table = self._tables[rnd.choices(self._names, self._weights)[0]]
        if rnd.random() < self.hot_share:
            ident = rnd.randrange(max(1, int(table.keys * self.hot_keys))) + 1
        else:
            ident = rnd.randrange(table.keys) + 1
        rows = self.rows[table.name]
        before = rows.get(ident)
        if before is None:
            op, after = "c", self._new_row(table.name, ident)
        elif rnd.random() < 0.12:
            op, after = "d", None
        else:
            op, after = "u", self._updated(table.name, before)
        if after is None:
            rows.pop(ident, None)
        else:
            rows[ident] = after
        self.ever[table.name].add(ident)
        out = [self._record(table.name, op, before, after, ident)]
        if op == "d":
            self.deletes += 1
            out.append(Message(self.topic(table.name), out[0].key, None))
        return out

    def probe(self, ident: int, sent_us: int) -> Message:
        """An insert into ``inventory.probes`` whose cache key tells when it was sent."""
        return self._record("probes", "c", None, {"id": ident, "sent_us": sent_us}, ident)

    def _key_fields(self, table: str, ident: int) -> dict[str, Any]:
        if table == "stock":
            return {"sku_id": (ident - 1) // 4 + 1, "warehouse": WAREHOUSES[(ident - 1) % 4]}
        return {"id": ident}

    def _new_row(self, table: str, ident: int) -> dict[str, Any]:
        rnd, key = self.rnd, self._key_fields(table, ident)
        if table == "products":
            return {**key, "name": f"product {ident}", "description": "a widget " * 4,
                    "price": f"{rnd.randint(100, 99999) / 100:.2f}"}  # fmt: skip
        if table == "stock":
            return {**key, "qty": rnd.randint(0, 500), "price": f"{rnd.randint(1, 9999) / 100}",
                    "updated_at": self.ts_ms, "note": "fresh"}  # fmt: skip
        total = f"{rnd.randint(100, 500_000) / 100:.2f}"
        return {**key, "customer_id": rnd.randint(1, 50_000), "status": "new",
                "total": total, "updated_at": self.ts_ms}  # fmt: skip

    def _updated(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        rnd, new = self.rnd, dict(row)
        if table == "products":
            new["price" if rnd.random() < 0.7 else "description"] = (
                f"{rnd.randint(100, 99999) / 100:.2f}"
            )
        elif table == "stock":
            if rnd.random() < 0.15:
                new["note"] = f"checked {self.changes}"  # unwatched: a no-op for the cache
            else:
                new["qty"] = rnd.randint(0, 500)
            new["updated_at"] = self.ts_ms
        else:
            new["status"] = rnd.choice(STATUSES)
            new["updated_at"] = self.ts_ms
        return new

    def _record(
        self,
        table: str,
        op: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        ident: int,
    ) -> Message:
        self.changes += 1
        self.pos += self.rnd.randint(150, 400)
        if self.pos > 1_000_000_000:
            self.file, self.pos = self.file + 1, 4
        self.ts_ms += self.rnd.randint(0, 2)
        source = {
            "version": "3.6.3.Final", "connector": "mysql", "name": self.prefix,
            "ts_ms": self.ts_ms, "snapshot": "false", "db": DB, "sequence": None,
            "ts_us": self.ts_ms * 1000, "ts_ns": self.ts_ms * 1_000_000, "table": table,
            "server_id": 1, "gtid": None, "file": f"mysql-bin.{self.file:06d}",
            "pos": self.pos, "row": 0, "thread": 7, "query": None,
        }  # fmt: skip
        emitted = self.ts_ms + 5
        payload = {
            "before": before, "after": after, "source": source, "transaction": None,
            "op": op, "ts_ms": emitted, "ts_us": emitted * 1000, "ts_ns": emitted * 1_000_000,
        }  # fmt: skip
        key = orjson.dumps(self._key_fields(table, ident))
        value = orjson.dumps(payload)
        if self.changes % 2 == 0:
            value_schema, key_schema = self.schemas[table]
            value = b'{"schema":' + value_schema + b',"payload":' + value + b"}"
            key = b'{"schema":' + key_schema + b',"payload":' + key + b"}"
        return Message(self.topic(table), key, value)

    def expected(self) -> tuple[dict[str, bytes | dict[bytes, bytes]], list[str]]:
        """The cache the rules imply: present keys with values, and keys that must be absent.

        Absent keys are those of rows that existed and were deleted.
        """
        present: dict[str, bytes | dict[bytes, bytes]] = {}
        for ident, row in self.rows["products"].items():
            present[f"product:{ident}"] = orjson.dumps(
                {"id": row["id"], "name": row["name"], "price": row["price"]}
            )
        for row in self.rows["stock"].values():
            projected = {c: row[c] for c in ("sku_id", "warehouse", "qty", "price")}
            present[f"stock:{row['sku_id']}:{row['warehouse']}"] = orjson.dumps(projected)
        for ident, row in self.rows["orders"].items():
            present[f"order:{ident}"] = {
                b"id": str(ident).encode(),
                b"customer_id": str(row["customer_id"]).encode(),
                b"status": row["status"].encode(),
                b"total": row["total"].encode(),
            }
        absent = [f"product:{i}" for i in self.ever["products"] - self.rows["products"].keys()]
        absent += [f"order:{i}" for i in self.ever["orders"] - self.rows["orders"].keys()]
        for ident in self.ever["stock"] - self.rows["stock"].keys():
            key = self._key_fields("stock", ident)
            absent.append(f"stock:{key['sku_id']}:{key['warehouse']}")
        return present, absent
