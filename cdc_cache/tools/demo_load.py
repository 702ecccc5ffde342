"""The demo's inventory schema and a random write load on it.

The schema matches ``examples/inventory.rules.yaml``. ``(sku_id, warehouse)`` is unique
because it is the cache key ``stock:{sku_id}:{warehouse}``: two rows sharing one key would
make the cache hold whichever was written last, and the consistency check meaningless.
One warehouse name needs escaping in keys, so the demo shows that too.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from cdc_cache.tools.devstack.mariadb import MariaDB

DATABASE: Final = "inventory"
WAREHOUSES: Final = ("berlin", "lisbon", "osaka", "austin", "são paulo")
SKUS: Final = tuple(f"sku-{n:04d}" for n in range(1, 61))
TARGET_ROWS: Final = 150
SEED_ROWS: Final = 100
PRODUCTS: Final = 20

SCHEMA: Final = (
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.stock (
        id INT AUTO_INCREMENT PRIMARY KEY,
        sku_id VARCHAR(32) NOT NULL,
        warehouse VARCHAR(64) NOT NULL,
        qty INT NOT NULL,
        price DECIMAL(10, 2) NOT NULL,
        note VARCHAR(255),
        updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
            ON UPDATE CURRENT_TIMESTAMP(3),
        UNIQUE KEY sku_warehouse (sku_id, warehouse)
    )""",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.warehouses (
        name VARCHAR(64) PRIMARY KEY,
        city VARCHAR(64) NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.products (
        id INT PRIMARY KEY,
        name VARCHAR(128) NOT NULL,
        description TEXT,
        weight DECIMAL(8, 3)
    )""",
)


def create_schema(db: MariaDB, rng: random.Random) -> None:
    """Create the inventory schema and seed rows unless already there (idempotent)."""
    with db.connect() as conn, conn.cursor() as cur:
        for statement in SCHEMA:
            cur.execute(statement)
        cur.execute(f"SELECT COUNT(*) FROM {DATABASE}.stock")
        (count,) = cur.fetchone()
        if count == 0:
            pairs = rng.sample([(s, w) for s in SKUS for w in WAREHOUSES], SEED_ROWS)
            cur.executemany(
                f"INSERT INTO {DATABASE}.stock (sku_id, warehouse, qty, price) "
                "VALUES (%s, %s, %s, %s)",
                [(sku, wh, rng.randint(0, 500), _price(rng)) for sku, wh in pairs],
            )
        cur.executemany(
            f"INSERT IGNORE INTO {DATABASE}.warehouses (name, city) VALUES (%s, %s)",
            [(wh, wh.title()) for wh in WAREHOUSES],
        )
        cur.executemany(
            f"INSERT IGNORE INTO {DATABASE}.products (id, name, description, weight) "
            "VALUES (%s, %s, %s, %s)",
            [
                (n, f"product {n}", f"demo product {n}", Decimal(rng.randint(100, 9000)) / 1000)
                for n in range(1, PRODUCTS + 1)
            ],
        )


def _price(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(99, 99_999)) / 100


@dataclass
class LoadStats:
    """What the load did so far; written by the load thread, read by the display."""

    transactions: int = 0
    conflicts: int = 0
    error: str | None = None
    _written: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=1000))

    def wrote(self, stock_id: int) -> None:
        """Remember that a stock row was just written."""
        self._written.append((time.monotonic(), stock_id))

    def written_before(self, age_s: float) -> int | None:
        """The stock row written most recently, but at least ``age_s`` ago.

        A row that old has usually reached the cache, so a viewer sees it match; one just
        written would always show as in flight.
        """
        cutoff = time.monotonic() - age_s
        for at, stock_id in reversed(self._written):
            if at <= cutoff:
                return stock_id
        return None


@dataclass
class WriteLoad:
    """Random transactions on ``inventory`` at ``rate`` per second, in a background thread.

    The mix covers what the cache must get right: inserts, qty updates, rows moving between
    warehouses (old key deleted, new key written), deletes, multi-row statements (rows that
    share a binlog position), note-only updates (no watched column: no cache write) and
    product updates. A move or insert onto an occupied ``(sku, warehouse)`` is rolled back
    and counted as a conflict.
    """

    db: MariaDB
    rate: float
    rng: random.Random = field(default_factory=random.Random)
    stats: LoadStats = field(default_factory=LoadStats)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ids: list[int] = field(default_factory=list)

    def start(self) -> None:
        """Begin writing in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="demo-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current transaction and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        try:
            with self.db.connect(DATABASE) as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT id FROM stock")
                    self._ids = [row[0] for row in cur.fetchall()]
                interval = 1.0 / self.rate
                next_at = time.monotonic()
                while not self._stop.is_set():
                    self._transaction(conn)
                    next_at = max(next_at + interval, time.monotonic() - 1.0)
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
        except Exception as exc:  # shown to the viewer; the demo then stops
            self.stats.error = f"write load stopped: {exc!r}"

    def _transaction(self, conn: Any) -> None:
        ops: list[tuple[int, Callable[[Any], None]]] = [
            (25, self._update_qty),
            (15, self._insert if len(self._ids) < TARGET_ROWS else self._delete),
            (10, self._delete if len(self._ids) > TARGET_ROWS // 2 else self._insert),
            (10, self._move),
            (10, self._restock_sku),
            (10, self._multi_statement),
            (10, self._touch_note),
            (10, self._update_product),
        ]
        op = self.rng.choices([o for _, o in ops], weights=[w for w, _ in ops])[0]
        conn.begin()
        try:
            with conn.cursor() as cur:
                op(cur)
            conn.commit()
        except _integrity_error() as exc:
            conn.rollback()
            if exc.args[0] != _DUPLICATE_KEY:
                raise
            self.stats.conflicts += 1
            return
        except BaseException:
            conn.rollback()
            raise
        self.stats.transactions += 1

    def _pick(self) -> int | None:
        return self.rng.choice(self._ids) if self._ids else None

    def _update_qty(self, cur: Any) -> None:
        row = self._pick()
        if row is not None:
            delta = self.rng.randint(-20, 20)
            cur.execute("UPDATE stock SET qty = GREATEST(qty + %s, 0) WHERE id = %s", (delta, row))
            self.stats.wrote(row)

    def _insert(self, cur: Any) -> None:
        sku, wh = self.rng.choice(SKUS), self.rng.choice(WAREHOUSES)
        cur.execute(
            "INSERT INTO stock (sku_id, warehouse, qty, price) VALUES (%s, %s, %s, %s)",
            (sku, wh, self.rng.randint(0, 500), _price(self.rng)),
        )
        self._ids.append(cur.lastrowid)
        self.stats.wrote(cur.lastrowid)

    def _delete(self, cur: Any) -> None:
        row = self._pick()
        if row is not None:
            cur.execute("DELETE FROM stock WHERE id = %s", (row,))
            self._ids.remove(row)

    def _move(self, cur: Any) -> None:
        row = self._pick()
        if row is not None:
            cur.execute(
                "UPDATE stock SET warehouse = %s WHERE id = %s", (self.rng.choice(WAREHOUSES), row)
            )
            self.stats.wrote(row)

    def _restock_sku(self, cur: Any) -> None:
        """One statement, several rows: they share a binlog position, told apart by row."""
        cur.execute(
            "UPDATE stock SET qty = qty + %s WHERE sku_id = %s",
            (self.rng.randint(1, 50), self.rng.choice(SKUS)),
        )

    def _multi_statement(self, cur: Any) -> None:
        """A transaction of several statements on different rows (and maybe one delete)."""
        for _ in range(3):
            self._update_qty(cur)
        if len(self._ids) > TARGET_ROWS // 2 and self.rng.random() < 0.3:
            self._delete(cur)

    def _touch_note(self, cur: Any) -> None:
        row = self._pick()
        if row is not None:
            cur.execute(
                "UPDATE stock SET note = %s WHERE id = %s", (f"checked {time.time():.0f}", row)
            )

    def _update_product(self, cur: Any) -> None:
        cur.execute(
            "UPDATE products SET weight = %s WHERE id = %s",
            (Decimal(self.rng.randint(100, 9000)) / 1000, self.rng.randint(1, PRODUCTS)),
        )


_DUPLICATE_KEY: Final = 1062


def _integrity_error() -> type[Exception]:
    import pymysql

    error: type[Exception] = pymysql.err.IntegrityError
    return error
