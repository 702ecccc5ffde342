"""A random inventory workload as SQL transactions against a real database.

Keeps a model of the table so every statement is valid (the (sku_id, warehouse) pair is
unique, as a cache key must be): inserts, updates of one or several rows (as one
multi-row statement or as several statements), rows moving between keys, changes to an
unwatched column only, deletes, primary-key changes, and transactions of several changes.
The placeholders (``%s``) suit both PyMySQL and psycopg.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

Statement = tuple[str, tuple[Any, ...]]
WAREHOUSES = ("north", "south", "east", "west", "a:b {c}*", "ünï cødé")

RULES = """
version: 2
defaults: {{safety_ttl: 1h, tombstone_ttl: 30m}}
tables:
  {schema}.stock:
    columns: [id, sku_id, warehouse, qty, price, note]
    types: {{price: decimal(2)}}  # schemaless JSON carries no scale (precise decimals)
    watch: [id, sku_id, warehouse, qty, price]
    keys:
      - key: "stock:{{sku_id}}:{{warehouse}}"
        fields: [id, sku_id, warehouse, qty, price]
      - key: "sku:{{sku_id}}:availability"
        action: delete
      - key: "stockid:{{id}}"
        format: hash
        fields: [id, sku_id, warehouse, qty]
"""

DDL = """
CREATE TABLE {schema}.stock (
    id INT PRIMARY KEY,
    sku_id INT NOT NULL,
    warehouse VARCHAR(32) NOT NULL,
    qty INT,
    price DECIMAL(10, 2) NOT NULL,
    note VARCHAR(64),
    UNIQUE (sku_id, warehouse)
)
"""


def rules_for(schema: str) -> str:
    return RULES.format(schema=schema)


@dataclass
class SqlWorkload:
    """Generates transactions in commit order; ``rows`` is what the table will hold."""

    schema: str
    seed: int = 0
    skus: int = 3000
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_id: int = 1
    table_name: str = "stock"

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.seed)
        self.table = f"{self.schema}.{self.table_name}"

    def transactions(self, count: int) -> Iterable[list[Statement]]:
        for _ in range(count):
            changes = 1 if self.rnd.random() < 0.8 else self.rnd.randint(2, 4)
            yield [stmt for _ in range(changes) for stmt in self._change()]

    def _change(self) -> list[Statement]:
        choice = self.rnd.random()
        if choice < 0.3 or len(self.rows) < 20:
            return self._insert()
        ids = sorted(self.rows)
        if choice < 0.6:
            return self._update_qty(self.rnd.sample(ids, k=self.rnd.randint(1, 4)))
        if choice < 0.75:
            return self._move(self.rnd.choice(ids))
        if choice < 0.8:
            return self._note(self.rnd.choice(ids))
        if choice < 0.997:
            return self._delete(self.rnd.choice(ids))
        return self._change_id(self.rnd.choice(ids))

    def _free_slot(self) -> tuple[int, str]:
        taken = {(r["sku_id"], r["warehouse"]) for r in self.rows.values()}
        while True:
            slot = (self.rnd.randint(1, self.skus), self.rnd.choice(WAREHOUSES))
            if slot not in taken:
                return slot

    def _price(self) -> Decimal:
        return Decimal(self.rnd.randint(100, 99_999)) / 100

    def _insert(self) -> list[Statement]:
        sku, warehouse = self._free_slot()
        row = {
            "id": self.next_id,
            "sku_id": sku,
            "warehouse": warehouse,
            "qty": self.rnd.choice([None, *range(50)]),
            "price": self._price(),
            "note": "new",
        }
        self.next_id += 1
        self.rows[row["id"]] = row
        columns = ", ".join(row)
        return [
            (
                f"INSERT INTO {self.table} ({columns}) VALUES ({', '.join(['%s'] * len(row))})",
                tuple(row.values()),
            )
        ]

    def _update_qty(self, ids: list[int]) -> list[Statement]:
        delta = self.rnd.randint(1, 9)
        for row_id in ids:
            row = self.rows[row_id]
            row["qty"] = None if row["qty"] is None else row["qty"] + delta
        marks = ", ".join(["%s"] * len(ids))
        if self.rnd.random() < 0.5:  # one statement changing several rows
            return [
                (f"UPDATE {self.table} SET qty = qty + %s WHERE id IN ({marks})", (delta, *ids))
            ]
        return [(f"UPDATE {self.table} SET qty = qty + %s WHERE id = %s", (delta, i)) for i in ids]

    def _move(self, row_id: int) -> list[Statement]:
        sku, warehouse = self._free_slot()
        row = self.rows[row_id]
        row.update(sku_id=sku, warehouse=warehouse, price=self._price())
        return [
            (
                f"UPDATE {self.table} SET sku_id = %s, warehouse = %s, price = %s WHERE id = %s",
                (sku, warehouse, row["price"], row_id),
            )
        ]

    def _note(self, row_id: int) -> list[Statement]:
        note = f"n{self.rnd.randint(0, 10**6)}"
        self.rows[row_id]["note"] = note
        return [(f"UPDATE {self.table} SET note = %s WHERE id = %s", (note, row_id))]

    def _delete(self, row_id: int) -> list[Statement]:
        del self.rows[row_id]
        return [(f"DELETE FROM {self.table} WHERE id = %s", (row_id,))]

    def _change_id(self, row_id: int) -> list[Statement]:
        row = self.rows.pop(row_id)
        row["id"] = self.next_id
        self.next_id += 1
        self.rows[row["id"]] = row
        return [(f"UPDATE {self.table} SET id = %s WHERE id = %s", (row["id"], row_id))]


def execute(conn: Any, transactions: Iterable[list[Statement]]) -> int:
    """Run each transaction and commit it (``conn`` must not autocommit); returns the count."""
    count = 0
    with conn.cursor() as cur:
        for statements in transactions:
            for sql, params in statements:
                cur.execute(sql, params)
            conn.commit()
            count += 1
    return count
