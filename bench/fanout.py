"""The cost of invalidation across tables: how fast a tag's keys go, and what it delays.

For each deployment (one Redis server; a 3-primary Redis Cluster) and fan-out size
(``--sizes``, default 1k, 10k and 100k dependent keys under one parent row's tag):

* ``keys_per_s``: the tag invalidated through :class:`~cdc_cache.sink.tags.TagStore`
  exactly as the worker does (version raised, members walked ``--page`` at a time, each
  page one gated delete call per slot), divided by its duration;
* ``other_p50_ms`` / ``other_p99_ms``: while it runs, another connection applies small
  batches of ordinary key ops (100 sets per batch, as a second worker would) and times
  each; ``idle_p50_ms`` / ``idle_p99_ms`` are the same batches without a fan-out. A
  fan-out runs inside the batch that planned it, so the changes *behind it in the same
  worker* wait for all of it: that stall is ``seconds``.

    python bench/fanout.py [--sizes 1000 10000 100000] [--out bench/results/fanout.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc_cache_client.tags import member

from bench.memory import deployments
from cdc_cache.core.keys import ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import InvalidateTag, SetRow, ValueFormat
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import Client, primaries
from cdc_cache.sink.tags import TagStore

TAG = "catalog.brands:7"
TOMBSTONE_MS = 3_600_000
OTHER_BATCH = 100


def at(n: int) -> SourcePosition:
    return SourcePosition(0, 42, n, 0)


def prepare(client: Client, size: int) -> None:
    """``size`` product pages cached and linked under the brand's tag (bulk, not timed)."""
    for start in range(0, size, 5_000):
        pipe = client.pipeline(transaction=False)
        fields: dict[str | bytes, bytes | float | int | str] = {}
        for i in range(start, min(size, start + 5_000)):
            key = f"product:{i}:page"
            pipe.set(key, b"<html>page</html>", px=86_400_000)
            fields[member(key, f"catalog.products:{i}")] = "+" + at(1).encode()
        pipe.execute()
        client.hset(ns().tag_key(TAG), mapping=fields)


def other_batches(client: Client, stop: threading.Event, n: int) -> list[float]:
    """Milliseconds per batch of ordinary sets, applied until ``stop`` (own connections)."""
    applier = RedisApplier(client)
    times: list[float] = []
    round_ = 0
    while not stop.is_set():
        round_ += 1
        ops = [
            SetRow(f"stock:{i}:{n}", at(10 + round_), b'{"qty":1}', ValueFormat.JSON,
                   86_400_000, TOMBSTONE_MS)
            for i in range(OTHER_BATCH)
        ]  # fmt: skip
        started = time.perf_counter()
        applier.apply(ops)
        times.append((time.perf_counter() - started) * 1000)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else 0.0


def measure(client: Client, size: int, page: int) -> dict[str, Any]:
    for node in primaries(client):
        node.flushall()
    stop = threading.Event()
    idle: list[float] = []
    worker = threading.Thread(target=lambda: idle.extend(other_batches(client, stop, 0)))
    worker.start()
    time.sleep(1.0)
    stop.set()
    worker.join()
    prepare(client, size)
    stop = threading.Event()
    busy: list[float] = []
    worker = threading.Thread(target=lambda: busy.extend(other_batches(client, stop, 1)))
    worker.start()
    time.sleep(0.2)
    store = TagStore(client, RedisApplier(client), page_size=page, fanout_limit=10**9)
    started = time.perf_counter()
    result = store.apply([InvalidateTag(TAG, at(5), TOMBSTONE_MS, ("product:",))])
    seconds = time.perf_counter() - started
    stop.set()
    worker.join()
    assert result.deleted == size, (result.deleted, size)
    return {
        "size": size,
        "seconds": round(seconds, 3),
        "keys_per_s": round(size / seconds),
        "idle_p50_ms": percentile(idle, 0.5),
        "idle_p99_ms": percentile(idle, 0.99),
        "other_p50_ms": percentile(busy, 0.5),
        "other_p99_ms": percentile(busy, 0.99),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "page": args.page,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="cdc-bench-fanout-") as home:
        for deployment, client in deployments(Path(home)):
            result["redis"] = primaries(client)[0].info("server")["redis_version"]
            for size in args.sizes:
                print(f"{deployment}, {size:,} keys...", flush=True)
                numbers = measure(client, size, args.page)
                result["runs"].append({"deployment": deployment} | numbers)
            client.close()
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Redis {result['redis']}, pages of {result['page']} members",
        "",
        "| deployment | dependent keys | seconds | keys/s | other batches p50 / p99 ms, "
        "idle → during |",
        "|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['deployment']} | {r['size']:,} | {r['seconds']} | {r['keys_per_s']:,} | "
            f"{r['idle_p50_ms']} / {r['idle_p99_ms']} → {r['other_p50_ms']} / "
            f"{r['other_p99_ms']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--page", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fanout.json"))
    args = parser.parse_args(argv)
    result = run(args)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
