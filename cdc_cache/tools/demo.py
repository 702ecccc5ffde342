"""``cdc-cache demo``: the whole path, live, on the local stack.

Starts Redis, the broker, MariaDB and Debezium (``dev up``), the worker with the example
rules, the notification gateway (its live page's URL, with a token, is printed), the
consistency inspector (``cdc-cache inspect``, every change sampled), and a random write
load on the inventory schema; shows what the worker does once a second from its own
``/metrics``, the inspector's nines, and one cache entry next to its row. On stop it lets
the worker drain, checks every stock row against its cache key, and stops what it started.

Kept in one module: one command's processes, write load and live display, a tool for
developers beside the product.
"""

from __future__ import annotations

import importlib.resources
import os
import random
import secrets
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from cdc_cache.aside.cache_aside import CacheAside
from cdc_cache.core import metrics
from cdc_cache.core.histograms import quantile
from cdc_cache.core.keys import escape_value
from cdc_cache.notify.tokens import issue
from cdc_cache.plan.rules import Action, Rules
from cdc_cache.plan.rules_loader import load_rules
from cdc_cache.source.topics import HEARTBEAT_TOPIC_PREFIX
from cdc_cache.tools.demo_load import DATABASE, WriteLoad, create_schema
from cdc_cache.tools.devstack.broker import Broker
from cdc_cache.tools.devstack.mariadb import MariaDB
from cdc_cache.tools.devstack.process import ManagedProcess, StackError, free_port, port_open
from cdc_cache.tools.devstack.stack import DEFAULT_SERVICES, Stack, StackConfig
from cdc_cache.tools.verify import verify
from cdc_cache.tools.verify_judge import Finding, as_cached, derive, same_value
from cdc_cache.tools.verify_report import Report

TOPIC_PREFIX: Final = "dbserver1"
TOPIC_PATTERN: Final = rf"{TOPIC_PREFIX}\.{DATABASE}\..*"
HEARTBEAT_TOPIC: Final = f"{HEARTBEAT_TOPIC_PREFIX}{TOPIC_PREFIX}"
TOPICS: Final = tuple(f"{TOPIC_PREFIX}.{DATABASE}.{t}" for t in ("stock", "products", "warehouses"))
PARTITIONS: Final = 3
STOCK_TABLE: Final = f"{DATABASE}.stock"
WINDOW_S: Final = 5
DRAIN_QUIET_S: Final = 2.0
DRAIN_LIMIT_S: Final = 30.0
PLAIN_EVERY_S: Final = 5
DEPENDENT_LIMIT_S: Final = 5.0
DEPENDENT_POLL_S: Final = 0.8
SAMPLE_AGE_S: Final = 3.0
OUTCOMES: Final = ("applied", "stale", "duplicate", "no_op")
LIVE_CHANNELS: Final = "inventory:*"  # the example rules' stock channels, one per warehouse
RESOLUTION_NOTE: Final = "from Debezium emitting the change, estimated from histogram buckets"


class DemoError(StackError):
    """The demo cannot go on: a part stopped or is missing."""


def example_rules() -> Path:
    """The rules file shipped for the inventory schema."""
    return Path(
        str(importlib.resources.files("cdc_cache").joinpath("examples/inventory.rules.yaml"))
    )


@dataclass(frozen=True)
class Scrape:
    """The worker's counters at one instant (cumulative since it started)."""

    at: float
    events: Mapping[str, float]
    rejected: float
    retries: float
    latency_buckets: tuple[tuple[float, float], ...]
    lag_s: float | None = None
    mode: str = "?"

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        """Read the counters the demo shows from Prometheus text exposition."""
        events = dict.fromkeys(OUTCOMES, 0.0)
        rejected = retries = 0.0
        buckets: dict[float, float] = {}
        lags: list[float] = []
        mode = "?"
        names = {
            "events": f"{metrics.NAMESPACE}_events",
            "records": f"{metrics.NAMESPACE}_records",
            "retries": f"{metrics.NAMESPACE}_retries",
            "latency": f"{metrics.NAMESPACE}_emitted_to_applied_seconds",
            "lag": f"{metrics.NAMESPACE}_connector_lag_seconds",
            "mode": f"{metrics.NAMESPACE}_mode",
        }
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if family.name == names["events"] and sample.name.endswith("_total"):
                    outcome = labels.get("outcome", "")
                    events[outcome] = events.get(outcome, 0.0) + sample.value
                elif family.name == names["records"] and labels.get("kind") == "rejected":
                    rejected += sample.value if sample.name.endswith("_total") else 0.0
                elif family.name == names["retries"] and sample.name.endswith("_total"):
                    retries += sample.value
                elif family.name == names["latency"] and sample.name.endswith("_bucket"):
                    buckets[float(labels["le"])] = sample.value
                elif family.name == names["lag"]:
                    lags.append(sample.value)
                elif family.name == names["mode"] and sample.value == 1:
                    mode = labels.get("mode", "?")
        return cls(
            at,
            events,
            rejected,
            retries,
            tuple(sorted(buckets.items())),
            max(lags) if lags else None,
            mode,
        )

    def since(self, earlier: Scrape) -> Scrape:
        """The counts between ``earlier`` and this scrape."""
        return Scrape(
            self.at - earlier.at,
            {k: v - earlier.events.get(k, 0.0) for k, v in self.events.items()},
            self.rejected - earlier.rejected,
            self.retries - earlier.retries,
            tuple(
                (le, count - dict(earlier.latency_buckets).get(le, 0.0))
                for le, count in self.latency_buckets
            ),
            self.lag_s,
            self.mode,
        )

    def quantile(self, q: float) -> float | None:
        """Latency quantile from the buckets (:func:`~cdc_cache.core.histograms.quantile`)."""
        return quantile(self.latency_buckets, q)


def _lag(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def scrape(port: int) -> Scrape:
    """Fetch and parse the worker's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return Scrape.parse(response.read().decode(), time.monotonic())


def inspection(port: int) -> dict[str, Any]:
    """The inspector's report (``GET /inspect``); empty while it cannot answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/inspect", timeout=5) as response:
            report: dict[str, Any] = orjson.loads(response.read())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return report


def consistency_line(report: Mapping[str, Any]) -> str:
    """The inspector's nines per window, time to consistency and latest inconsistency."""
    windows = report.get("windows")
    if not windows:
        return "inspect   (starting)"
    shown = "  ".join(
        f"{name} {w['consistency'] or '-'} of {w['checks']}" for name, w in windows.items()
    )
    ttc = report["time_to_consistency_s"]
    latest = report["latest_inconsistencies"]
    last = f"{latest[0]['kind']} {latest[0]['key']} ({latest[0]['age_s']} s)" if latest else "none"
    return (
        f"inspect   consistent {shown}  time to consistency p50 {ttc['p50']} s "
        f"p99 {ttc['p99']} s  latest inconsistency: {last}"
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


class Inventory:
    """Reads ``inventory.stock`` and the cache side by side, through the example rules."""

    def __init__(self, db: MariaDB, cache: redis.Redis[bytes], rules: Rules) -> None:
        self._db = db
        self._conn = db.connect(DATABASE)
        with self._conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")  # TIMESTAMP values read in UTC
        self._cache = cache
        self._rules = rules
        table = rules.for_table(STOCK_TABLE)
        if table is None or not any(r.action is Action.SET for r in table.keys):
            msg = f"{example_rules()} has no set rule for {STOCK_TABLE}: restore the example file"
            raise DemoError(msg)
        self._table = table

    def close(self) -> None:
        self._conn.close()

    def check(self) -> Report:
        """``cdc-cache verify`` of the stock table: every key against its row, and strays."""
        dsn = f"{self._db.dsn()}/{DATABASE}"
        return verify(dsn, self._rules, self._cache, tables=(STOCK_TABLE,))

    def sample(self, row_id: int | None) -> str:
        """One row next to its cache entry, and whether they agree."""
        if row_id is None:
            return "sample  (waiting for the first write)"
        with self._conn.cursor() as cur:
            cur.execute("SELECT * FROM stock WHERE id = %s", (row_id,))
            found = cur.fetchone()
            columns = [d[0] for d in cur.description]
            if found is not None:
                read = dict(zip(columns, found, strict=True))
                row = as_cached(read, cur, self._table.values, "mysql")
        if found is None:
            return f"sample  stock row id={row_id} was deleted since"
        (_, want), *_ = derive(self._table, row, ("id",)).sets
        got = self._cache.get(want.key)
        verdict = "match" if got is not None and same_value(want, got) else "in flight"
        shown = got.decode() if got is not None else "(no key yet)"
        db = " ".join(f"{k}={v}" for k, v in orjson.loads(want.value).items())  # type: ignore[arg-type]
        return f"sample  GET {want.key} = {shown}\n        row id={row_id}: {db}   [{verdict}]"


class DependentPage:
    """A key that depends on another table's rows, filled and then invalidated through them.

    ``page:sku:<sku>`` holds the sku's stock with each warehouse's city (rendered here, as an
    application would, and filled through ``CacheAside``); the example rules declare that
    it depends on ``inventory.warehouses``. A round fills one page, changes the city of one
    of its warehouses, and reports how long the worker took to delete the page (watched
    for up to ``DEPENDENT_POLL_S`` a round; ``STILL CACHED`` after ``DEPENDENT_LIMIT_S``).
    """

    def __init__(self, db: MariaDB, cache: redis.Redis[bytes]) -> None:
        self._conn = db.connect(DATABASE)
        self._cache = cache
        self._aside = CacheAside(cache, ttl_ms=600_000)
        self._rng = random.Random()
        self._pending: tuple[str, str, float] | None = None  # key, warehouse, changed at

    def close(self) -> None:
        self._conn.close()

    def step(self) -> str:
        """One round's news: a page filled, its warehouse changed, and the page's deletion."""
        if self._pending is None:
            return self._fill_and_change()
        key, warehouse, changed_at = self._pending
        deadline = time.monotonic() + DEPENDENT_POLL_S
        while self._cache.exists(key):
            waited = time.monotonic() - changed_at
            if time.monotonic() >= deadline:
                verdict = "STILL CACHED" if waited > DEPENDENT_LIMIT_S else "waiting"
                return f"depends  {key}: {verdict} {waited:.1f} s after {warehouse!r} changed"
            time.sleep(0.005)
        self._pending = None
        return (
            f"depends  {key} (stock + warehouse cities) deleted "
            f"{(time.monotonic() - changed_at) * 1000:.0f} ms after warehouse {warehouse!r} "
            "changed its city"
        )

    def _fill_and_change(self) -> str:
        with self._conn.cursor() as cur:
            cur.execute("SELECT sku_id, warehouse FROM stock ORDER BY RAND() LIMIT 1")
            found = cur.fetchone()
        if found is None:
            return "depends  (no stock row yet)"
        sku, warehouse = found
        key = f"page:sku:{escape_value(sku)}"
        self._aside.get(key, lambda: self._render(sku))
        if not self._cache.exists(key):
            return f"depends  {key}: its fill was voided by a change; next round"
        with self._conn.cursor() as cur:
            cur.execute(
                "UPDATE warehouses SET city = %s WHERE name = %s",
                (f"{warehouse.title()} {self._rng.randint(1, 999)}", warehouse),
            )
        self._pending = (key, warehouse, time.monotonic())
        return self.step()  # watch for its deletion right away (up to DEPENDENT_POLL_S)

    def _render(self, sku: str) -> bytes:
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT s.warehouse, s.qty, w.city FROM stock s "
                "LEFT JOIN warehouses w ON w.name = s.warehouse WHERE s.sku_id = %s "
                "ORDER BY s.warehouse",
                (sku,),
            )
            return orjson.dumps({"sku": sku, "stock": [list(row) for row in cur.fetchall()]})


@dataclass(frozen=True)
class DemoOptions:
    """What ``cdc-cache demo`` was asked to do."""

    rate: float = 30.0
    duration: float | None = None
    keep_running: bool = False


class _Display:
    """One small block redrawn in place on a terminal; appended every few seconds otherwise."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._lines = 0
        self._last_plain = 0.0

    def show(self, block: list[str]) -> None:
        if self._tty:
            up = f"\x1b[{self._lines}F\x1b[J" if self._lines else ""
            self._out.write(up + "\n".join(block) + "\n")
            self._lines = len(block)
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._out.write("\n".join(block) + "\n")
            self._last_plain = time.monotonic()
        self._out.flush()

    def say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()
        self._lines = 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Demo:
    """One run of the demo: start, show, drain, check, stop."""

    def __init__(self, options: DemoOptions, out: TextIO = sys.stdout) -> None:
        self.options = options
        self.stack = Stack(StackConfig.from_env())
        self.home = self.stack.config.home / "demo"
        self.display = _Display(out)
        self.metrics_port = free_port()
        self.worker = ManagedProcess("worker", (), self.home)
        self.inspect_port = free_port()
        self.inspector = ManagedProcess("inspect", (), self.home)
        self.gateway_port = free_port()
        self.gateway_secret = secrets.token_urlsafe(32)
        self.gateway = ManagedProcess(
            "gateway",
            (),
            self.home,
            env={**os.environ, "CDC_CACHE_GATEWAY_SECRET": self.gateway_secret},
        )
        self.started: list[str] = []
        self.load: WriteLoad | None = None
        self.began = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> int:
        """Run until Ctrl-C, SIGTERM or the duration; exit code 1 if the cache is stale."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return self._run()
        except KeyboardInterrupt:
            self.display.say("interrupted while starting")
            return 130
        finally:
            signal.signal(signal.SIGINT, self._patience)
            signal.signal(signal.SIGTERM, self._patience)
            try:
                self._stop_everything()
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, previous)

    def _patience(self, signum: int, frame: FrameType | None) -> None:
        self.display.say("stopping, please wait: leaving nothing running")

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def _run(self) -> int:
        rules = load_rules(example_rules())
        self.worker.stop()  # a worker left behind by an interrupted demo
        self.gateway.stop()
        self.inspector.stop()
        self._start_stack()
        mariadb = self.stack.service("mariadb")
        assert isinstance(mariadb, MariaDB)
        cache = redis.Redis.from_url(self.stack.service("redis").address())
        inventory = Inventory(mariadb, cache, rules)
        page = DependentPage(mariadb, cache)
        try:
            self.load = WriteLoad(mariadb, self.options.rate)
            self._watch(inventory, page)
            return self._finish(inventory)
        finally:
            page.close()
            inventory.close()
            cache.close()

    def _start_stack(self) -> None:
        """Stack, schema and topics first, then worker and Debezium, so nothing is missed."""
        say = self.display.say
        say(f"cdc-cache demo: state and logs under {self.stack.config.home}")
        fresh_broker = not self.stack.service("broker").running()
        self._up(DEFAULT_SERVICES)
        mariadb = self.stack.service("mariadb")
        broker = self.stack.service("broker")
        assert isinstance(mariadb, MariaDB) and isinstance(broker, Broker)
        create_schema(mariadb, random.Random())
        say(f"schema    {DATABASE}.stock, {DATABASE}.products ready")
        if fresh_broker:
            # Offsets saved by an earlier run point into topics this broker no longer has.
            shutil.rmtree(self.home / "recovery", ignore_errors=True)
        # The heartbeat topic too: the worker reads the heartbeat topics that exist when it
        # starts, and heartbeats keep idle partitions' lag honest.
        broker.create_topics(dict.fromkeys((*TOPICS, HEARTBEAT_TOPIC), PARTITIONS))
        self._start_worker(broker)
        self._start_inspector(broker, mariadb)
        self._start_gateway()
        self._up(["debezium"])

    def _up(self, services: Iterable[str]) -> None:
        for name in services:
            if not self.stack.service(name).running():
                self.started.append(name)
            self.stack.up([name], progress=self.display.say, timeout=120)

    def _source_args(self, broker: Broker) -> list[str]:
        """What the worker and the inspector both read: rules, topics, Redis."""
        return [
            "--rules", str(example_rules()),
            "--brokers", broker.bootstrap,
            "--topic-pattern", TOPIC_PATTERN,
            "--redis-url", self.stack.service("redis").address(),
        ]  # fmt: skip

    def _start_process(self, process: ManagedProcess, port: int, shown: str) -> None:
        """Start ``process``, wait until ``port`` answers, say what it serves (``shown``)."""
        began = time.monotonic()
        process.start(lambda: port_open(port), timeout=120)
        self.display.say(
            f"{process.name:<9} started in {time.monotonic() - began:5.2f}s  "
            f"{shown}, log {process.log_file}"
        )

    def _start_worker(self, broker: Broker) -> None:
        self.worker.argv = [
            sys.executable, "-m", "cdc_cache", "run", *self._source_args(broker),
            "--recovery-dir", str(self.home / "recovery"),
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        shown = f"metrics http://127.0.0.1:{self.metrics_port}/metrics"
        self._start_process(self.worker, self.metrics_port, shown)

    def _start_inspector(self, broker: Broker, mariadb: MariaDB) -> None:
        """``cdc-cache inspect`` beside the worker: every change checked a second after."""
        self.inspector.argv = [
            sys.executable, "-m", "cdc_cache", "inspect", *self._source_args(broker),
            "--db", f"{mariadb.dsn()}/{DATABASE}",
            "--port", str(self.inspect_port),
            "--sample-every", "1",
            "--max-samples-per-s", "100",
            "--settle-s", "1",
            "--min-checks", "20",
        ]  # fmt: skip
        shown = f"report http://127.0.0.1:{self.inspect_port}/"
        self._start_process(self.inspector, self.inspect_port, shown)

    def _start_gateway(self) -> None:
        """The WebSocket gateway and its live page, linked with a token for the stock channels."""
        self.gateway.argv = [
            sys.executable, "-m", "cdc_cache", "gateway",
            "--redis-url", self.stack.service("redis").address(),
            "--port", str(self.gateway_port),
        ]  # fmt: skip
        began = time.monotonic()
        self.gateway.start(lambda: port_open(self.gateway_port), timeout=60)
        token = issue(self.gateway_secret.encode(), [LIVE_CHANNELS], int(time.time()) + 86_400)
        self.display.say(
            f"{'gateway':<9} started in {time.monotonic() - began:5.2f}s  "
            f"log {self.gateway.log_file}"
        )
        self.display.say(
            f"live page http://127.0.0.1:{self.gateway_port}/?token={token}  "
            "(stock by warehouse, updated as changes commit)"
        )

    def _watch(self, inventory: Inventory, page: DependentPage) -> None:
        """Write and show progress until interrupted or the duration is over."""
        assert self.load is not None
        duration = self.options.duration
        self.display.say(
            f"writing ~{self.options.rate:g} transactions/s to MariaDB; "
            + ("Ctrl-C stops" if duration is None else f"stopping after {duration:g}s")
        )
        # From here a signal ends the loop between two updates, never inside a query.
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        self.began = time.monotonic()
        self.load.start()
        window: deque[Scrape] = deque(maxlen=WINDOW_S + 1)
        while not self.stop.wait(1.0):
            if duration is not None and time.monotonic() - self.began >= duration:
                break
            self._check_alive()
            window.append(scrape(self.metrics_port))
            block = [*self._progress(window, inventory), "       " + page.step()]
            self.display.show(block)
        self.display.say("stopping the write load")

    def _check_alive(self) -> None:
        assert self.load is not None
        if self.load.stats.error is not None:
            raise DemoError(self.load.stats.error)
        for part in (self.worker, self.inspector):
            if not part.running():
                msg = f"the {part.name} process stopped; its log is {part.log_file}"
                raise DemoError(msg)
        debezium = self.stack.service("debezium")
        if not debezium.running():
            msg = f"Debezium stopped; its log is {self.stack.config.home / 'debezium'}"
            raise DemoError(msg)

    def _progress(self, window: deque[Scrape], inventory: Inventory) -> list[str]:
        assert self.load is not None
        now = window[-1]
        recent = now.since(window[0]) if len(window) > 1 else now
        seconds = max(recent.at, 1.0) if len(window) > 1 else 1.0
        stats = self.load.stats
        elapsed = time.monotonic() - self.began
        return [
            f"{elapsed:5.0f}s  txns {stats.transactions} ({stats.conflicts} rolled back)  "
            f"applied {now.events['applied']:.0f} ({recent.events['applied'] / seconds:.0f}/s)  "
            f"stale {now.events['stale']:.0f}  duplicate {now.events['duplicate']:.0f}  "
            f"no-op {now.events['no_op']:.0f}  rejected {now.rejected:.0f}  "
            f"retries {now.retries:.0f}",
            f"       debezium->applied p50 {_ms(recent.quantile(0.5))}  "
            f"p99 {_ms(recent.quantile(0.99))}  (last {WINDOW_S}s)  "
            f"connector lag {_lag(now.lag_s)}  mode {now.mode}",
            "       " + consistency_line(inspection(self.inspect_port)),
            *(
                "       " + line
                for line in inventory.sample(stats.written_before(SAMPLE_AGE_S)).splitlines()
            ),
        ]

    def _finish(self, inventory: Inventory) -> int:
        """Stop writing, let the worker catch up, then report and check the cache."""
        assert self.load is not None
        self.load.stop()
        self.display.say("draining: waiting until the worker applies the last changes")
        final = self._drain()
        report = inventory.check()
        deadline = time.monotonic() + DRAIN_LIMIT_S
        while not report.clean and time.monotonic() < deadline:
            time.sleep(1.0)
            report = inventory.check()
        stale, missing = report.count(Finding.STALE), report.count(Finding.MISSING)
        unexpected = report.count(Finding.UNEXPECTED)
        ok = sum(t.set_keys for t in report.tables) - stale - missing
        stats = self.load.stats
        events = final.events
        inspected = self._inspected()
        self.display.say(
            "\n".join(
                [
                    f"summary after {time.monotonic() - self.began:.0f}s",
                    f"  transactions     {stats.transactions} committed, "
                    f"{stats.conflicts} rolled back (sku/warehouse taken)",
                    f"  events           {events['applied']:.0f} applied, "
                    f"{events['stale']:.0f} stale, {events['duplicate']:.0f} duplicate, "
                    f"{events['no_op']:.0f} no-op, {final.rejected:.0f} rejected, "
                    f"{final.retries:.0f} retries",
                    f"  debezium->applied p50 {_ms(final.quantile(0.5))}, "
                    f"p99 {_ms(final.quantile(0.99))} ({RESOLUTION_NOTE})",
                    f"  consistency      {ok} ok, {missing} missing, "
                    f"{stale} stale, {unexpected} unexpected "
                    f"({STOCK_TABLE} rows vs their keys, as cdc-cache verify checks)",
                    f"  inspector        {consistency_line(inspected)}; "
                    f"{inspected.get('unresolved', 0)} unresolved",
                ]
            )
        )
        return report.exit_code

    def _inspected(self) -> dict[str, Any]:
        """The inspector's report once its pending samples are judged (bounded wait)."""
        deadline = time.monotonic() + DRAIN_LIMIT_S
        report = inspection(self.inspect_port)
        while report.get("pending", 0) and time.monotonic() < deadline:
            time.sleep(0.5)
            report = inspection(self.inspect_port)
        return report

    def _drain(self) -> Scrape:
        """Wait until the applied count stays still for a moment (bounded)."""
        last = scrape(self.metrics_port)
        quiet_since = time.monotonic()
        deadline = time.monotonic() + DRAIN_LIMIT_S
        while time.monotonic() - quiet_since < DRAIN_QUIET_S and time.monotonic() < deadline:
            time.sleep(0.25)
            now = scrape(self.metrics_port)
            if sum(now.events.values()) != sum(last.events.values()):
                quiet_since = time.monotonic()
            last = now
        return last

    def _stop_everything(self) -> None:
        """Stop the load and worker always; the services this run started unless kept."""
        if self.load is not None:
            self.load.stop()
        if self.gateway.stop():
            self.display.say(f"{'gateway':<9} stopped")
        if self.inspector.stop():
            self.display.say(f"{'inspect':<9} stopped")
        if self.worker.stop():
            self.display.say(f"{'worker':<9} stopped")
        if self.options.keep_running:
            self.display.say("stack left running (--keep-running): stop it with cdc-cache dev down")
        elif self.started:
            self.stack.down(self.started, progress=self.display.say)


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo; the exit code is 1 when the cache disagrees with the table."""
    return Demo(options, out).run()
