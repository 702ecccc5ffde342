"""Memory per cached key of the worker's version metadata, before and after version buckets.

*Before* is the previous release's layout: one string key per cache key
(``cdc:v:{tag}:<key>``, a 60-digit position with ``.s``/``.d``, a TTL), written by its apply
script (kept here as ``bench/legacy_apply.lua``). *After* is today's: one small hash per
cluster slot, a 64-bit digest of the key as field, a 21-digit horizon and version as value,
no TTL, written by ``cdc_cache/sink/lua/apply.lua`` through ``RedisApplier``.

For each deployment (one Redis server; a 3-primary Redis Cluster) and value size (100 B
and 1 KB JSON documents), on ``--keys`` composite cache keys (``stock:<sku>:<warehouse>``):

* ``values``: the keys written with their values and no metadata (SET PX), memory over
  the empty deployment;
* ``live``: the same keys and values written through the apply script;
  ``(live - values) / keys`` is the metadata of a live cached key;
* ``tombstones``: those keys then deleted through the script, which leaves only the
  versions; ``(tombstones - empty) / keys`` is the metadata of a tombstone.

Memory is ``used_memory`` summed over the primaries. ``--apply-rounds`` compares what both
scripts cost Redis for the same calls on one server (Redis main-thread CPU per op, median
of interleaved rounds; first writes and updates of existing keys apart), so a layout that
saved memory at the cost of throughput would show.

    python bench/memory.py [--keys 1000000] [--out bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from redis import Redis, RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc_cache.core.keys import key_slot, ns
from cdc_cache.core.positions import SourcePosition
from cdc_cache.plan.cache_ops import DeleteKey, KeyOp, SetRow, ValueFormat
from cdc_cache.sink import encoding
from cdc_cache.sink.apply import RedisApplier
from cdc_cache.sink.connection import connect, primaries
from cdc_cache.sink.scripts import apply_script
from cdc_cache.tools.devstack.process import free_port
from cdc_cache.tools.devstack.redis import RedisClusterServers, RedisServer

ROOT = Path(__file__).resolve().parents[1]
LEGACY_SCRIPT = (ROOT / "bench/legacy_apply.lua").read_text()
TTL_MS = 86_400_000  # the rules' 24 h safety TTL
TOMBSTONE_MS = 3_600_000  # and 1 h tombstone TTL
WAREHOUSES = ("north", "south", "east", "west", "central")
BATCH = 1000  # ops per script call, as the worker sends
TARGET = 64  # bytes of metadata per key and per tombstone (issue 20)

Client: TypeAlias = "Redis[bytes] | RedisCluster[bytes]"
Layout = Callable[[Client, Sequence[KeyOp]], None]


def cache_keys(count: int) -> list[str]:
    """Composite keys like the rules render: a sku and a warehouse."""
    return [f"stock:{i // len(WAREHOUSES)}:{WAREHOUSES[i % len(WAREHOUSES)]}" for i in range(count)]


def document(key: str, size: int) -> bytes:
    """A JSON row image of about ``size`` bytes."""
    head = b'{"sku_id":%d,"warehouse":"%s","qty":17,"note":"' % (len(key), key[-5:].encode())
    return head + b"n" * max(0, size - len(head) - 2) + b'"}'


def position(n: int) -> SourcePosition:
    """Binlog positions as a busy server writes them: file 42, growing offsets, row 0."""
    return SourcePosition(0, 42, 4 + 311 * n, 0)


def sets(keys: Sequence[str], size: int, offset: int = 0) -> list[KeyOp]:
    return [
        SetRow(k, position(offset + i), document(k, size), ValueFormat.JSON, TTL_MS, TOMBSTONE_MS)
        for i, k in enumerate(keys)
    ]


def deletes(keys: Sequence[str], offset: int) -> list[KeyOp]:
    return [DeleteKey(k, position(offset + i), TOMBSTONE_MS) for i, k in enumerate(keys)]


# --- the two layouts ------------------------------------------------------------------------


def apply_buckets(client: Client, ops: Sequence[KeyOp]) -> None:
    """Today's layout, through the product's applier."""
    applier = RedisApplier(client)
    for start in range(0, len(ops), BATCH):
        applier.apply(ops[start : start + BATCH])


def legacy_call(ops: Sequence[KeyOp]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the previous release's apply script for ``ops``."""
    keys: list[str] = []
    args: list[Any] = []
    for op in ops:
        keys += [op.key, ns().legacy_version_key(op.key), ns().lease_key(op.key)]
        if isinstance(op, DeleteKey):
            args += ["D", op.position.encode() + ".d", op.tombstone_ttl_ms]
        else:
            assert isinstance(op, SetRow) and isinstance(op.value, bytes)
            lifetime = max(op.ttl_ms, op.tombstone_ttl_ms)
            args += ["J", op.position.encode() + ".s", lifetime, op.value, op.ttl_ms]
    return keys, args


def apply_legacy(client: Client, ops: Sequence[KeyOp]) -> None:
    """The previous release's layout, through its script: one call per slot and batch."""
    sha = hashlib.sha1(LEGACY_SCRIPT.encode(), usedforsecurity=False).hexdigest()
    for node, node_ops in _by_node(client, ops):
        node.execute_command("SCRIPT LOAD", LEGACY_SCRIPT)
        by_slot: dict[int, list[KeyOp]] = defaultdict(list)
        for op in node_ops:
            by_slot[key_slot(op.key) if isinstance(client, RedisCluster) else 0].append(op)
        pipe = node.pipeline(transaction=False)
        queued = 0
        for slot_ops in by_slot.values():
            for start in range(0, len(slot_ops), BATCH):
                keys, args = legacy_call(slot_ops[start : start + BATCH])
                pipe.evalsha(sha, len(keys), *keys, *args)
                queued += 1
                if queued % 50 == 0:
                    pipe.execute()
        pipe.execute()


def _by_node(client: Client, ops: Sequence[KeyOp]) -> list[tuple[Redis[bytes], list[KeyOp]]]:
    if not isinstance(client, RedisCluster):
        return [(client, list(ops))]
    grouped: dict[str, list[KeyOp]] = defaultdict(list)
    nodes = {}
    for op in ops:
        node = client.get_node_from_key(op.key)
        assert node is not None  # every slot has a primary in a healthy cluster
        grouped[node.name].append(op)
        nodes[node.name] = node
    return [(client.get_redis_connection(nodes[n]), grouped[n]) for n in sorted(grouped)]


LAYOUTS: dict[str, Layout] = {"before": apply_legacy, "after": apply_buckets}


# --- measuring ------------------------------------------------------------------------------


def used_memory(client: Client) -> int:
    """``used_memory`` summed over the primaries, once the allocator settled."""
    total = 0
    for node in primaries(client):
        node.execute_command("MEMORY", "PURGE")
        total += int(node.info("memory")["used_memory"])
    return total


def flush(client: Client) -> int:
    for node in primaries(client):
        node.flushall()
    return used_memory(client)


def write_values(client: Client, keys: Sequence[str], size: int) -> None:
    """The cache without the worker's metadata: values with their TTL, nothing else."""
    for node, node_ops in _by_node(client, sets(keys, size)):
        pipe = node.pipeline(transaction=False)
        for index, op in enumerate(node_ops):
            assert isinstance(op, SetRow) and isinstance(op.value, bytes)
            pipe.set(op.key, op.value, px=op.ttl_ms)
            if index % 5000 == 4999:
                pipe.execute()
        pipe.execute()


def per_key(client: Client, keys: Sequence[str], size: int, layout: Layout) -> dict[str, Any]:
    """Bytes per key of values, of a live key's metadata and of a tombstone's."""
    empty = flush(client)
    write_values(client, keys, size)
    values = used_memory(client) - empty
    flush(client)
    started = time.monotonic()
    layout(client, sets(keys, size))
    written_s = time.monotonic() - started
    live = used_memory(client) - empty
    layout(client, deletes(keys, offset=len(keys)))
    tombstones = used_memory(client) - empty
    count = len(keys)
    return {
        "values_per_key": round(values / count, 1),
        "metadata_per_live_key": round((live - values) / count, 1),
        "metadata_per_tombstone": round(tombstones / count, 1),
        "write_seconds": round(written_s, 1),
    }


def script_cost(client: Redis[bytes], keys: Sequence[str], rounds: int) -> dict[str, Any]:
    """Redis CPU per op of both scripts on the same calls: first writes, then updates."""
    calls: dict[str, Callable[[Sequence[KeyOp]], list[tuple[str, list[Any], list[Any]]]]] = {
        "before": lambda ops: [
            (hashlib.sha1(LEGACY_SCRIPT.encode(), usedforsecurity=False).hexdigest(), *call)
            for call in (legacy_call(ops[s : s + BATCH]) for s in range(0, len(ops), BATCH))
        ],
        "after": lambda ops: [
            (apply_script()[1], *_new_call(ops[s : s + BATCH])) for s in range(0, len(ops), BATCH)
        ],
    }
    sources = {"before": LEGACY_SCRIPT, "after": apply_script()[0]}
    cost: dict[str, dict[str, list[float]]] = {name: {"insert": [], "update": []} for name in calls}
    for _ in range(rounds):
        for name, build in calls.items():
            client.flushall()
            client.execute_command("SCRIPT LOAD", sources[name])
            first = build(sets(keys, 100))
            again = build(sets(keys, 100, offset=len(keys)))
            for phase, phase_calls in (("insert", first), ("update", again)):
                cost[name][phase].append(_cpu_per_op(client, phase_calls, len(keys)))
    return {
        name: {phase: round(statistics.median(v), 2) for phase, v in phases.items()}
        for name, phases in cost.items()
    } | {"unit": "Redis main-thread CPU microseconds per op, median of rounds"}


def _new_call(ops: Sequence[KeyOp]) -> tuple[list[Any], list[Any]]:
    (call,) = encoding.calls(ops, range(len(ops)), max_ops=len(ops))
    return list(call.keys), list(call.args)


def _cpu_per_op(
    client: Redis[bytes], calls: Sequence[tuple[str, list[Any], list[Any]]], ops: int
) -> float:
    def cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])

    before = cpu()
    for start in range(0, len(calls), 20):
        pipe = client.pipeline(transaction=False)
        for sha, keys, args in calls[start : start + 20]:
            pipe.evalsha(sha, len(keys), *keys, *args)
        pipe.execute()
    return (cpu() - before) / ops * 1e6


# --- the run --------------------------------------------------------------------------------


def deployments(home: Path) -> Iterator[tuple[str, Client]]:
    """One server, then a 3-primary cluster, each stopped after its measurements."""
    single = RedisServer(home / "single", free_port())
    single.start()
    try:
        yield "one server", connect(single.address(), socket_timeout=600)
    finally:
        single.stop()
    cluster = RedisClusterServers(
        home / "cluster", [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    )
    cluster.start()
    try:
        yield "Cluster, 3 primaries", connect(cluster.address(), socket_timeout=600)
    finally:
        cluster.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    keys = cache_keys(args.keys)
    result: dict[str, Any] = {
        "keys": args.keys,
        "redis": None,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="cdc-bench-memory-") as home:
        for deployment, client in deployments(Path(home)):
            result["redis"] = primaries(client)[0].info("server")["redis_version"]
            for size in args.value_sizes:
                for layout, apply in LAYOUTS.items():
                    print(f"{deployment}, {size} B values, {layout}...", flush=True)
                    numbers = per_key(client, keys, size, apply)
                    result["runs"].append(
                        {"deployment": deployment, "value_bytes": size, "layout": layout} | numbers
                    )
            if args.apply_rounds and isinstance(client, Redis):
                print("apply scripts' cost...", flush=True)
                cost_keys = keys[: min(len(keys), 100_000)]
                result["script_cost"] = script_cost(client, cost_keys, args.apply_rounds)
            client.close()
    return result


def markdown(result: dict[str, Any]) -> str:
    """The per-key table, before and after, and the scripts' cost."""
    lines = [
        f"{result['keys']:,} keys, Redis {result['redis']}; bytes per key "
        "(`used_memory` summed over primaries)",
        "",
        "| deployment | value | values | metadata per live key, before → after | "
        "per tombstone, before → after |",
        "|---|---|---|---|---|",
    ]
    runs = result["runs"]
    for deployment in dict.fromkeys(r["deployment"] for r in runs):
        for size in dict.fromkeys(r["value_bytes"] for r in runs):
            pair = {
                r["layout"]: r
                for r in runs
                if r["deployment"] == deployment and r["value_bytes"] == size
            }
            before, after = pair["before"], pair["after"]
            lines.append(
                f"| {deployment} | {size} B | {after['values_per_key']} | "
                f"{before['metadata_per_live_key']} → **{after['metadata_per_live_key']}** | "
                f"{before['metadata_per_tombstone']} → **{after['metadata_per_tombstone']}** |"
            )
    cost = result.get("script_cost")
    if cost:
        lines += [
            "",
            f"Apply script cost ({cost['unit']}): first writes "
            f"{cost['before']['insert']} → {cost['after']['insert']}, updates "
            f"{cost['before']['update']} → {cost['after']['update']}.",
        ]
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any]) -> str:
    """An SVG bar chart of metadata per live key and per tombstone, before and after."""
    runs = result["runs"]
    groups = []
    for r in runs:
        if r["layout"] == "after":
            before = next(
                b
                for b in runs
                if b["layout"] == "before"
                and (b["deployment"], b["value_bytes"]) == (r["deployment"], r["value_bytes"])
            )
            where = "Cluster" if "Cluster" in r["deployment"] else "one server"
            name = f"{where}, {r['value_bytes']} B"
            groups.append((name, before, r))
    bars = [
        ("live, before", "metadata_per_live_key", "before", "#c97b7b"),
        ("live, after", "metadata_per_live_key", "after", "#3b7dd8"),
        ("tombstone, before", "metadata_per_tombstone", "before", "#e0b0b0"),
        ("tombstone, after", "metadata_per_tombstone", "after", "#8fb8ec"),
    ]
    top = max(
        run[field]
        for _, before, after in groups
        for run in (before, after)
        for field in ("metadata_per_live_key", "metadata_per_tombstone")
    )
    scale = 260 / (top * 1.1)
    width, bar, gap, left, base = 120 + len(groups) * 150, 26, 22, 60, 300
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="380" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="{left}" y="18" font-size="14">Version metadata per key (bytes), '
        f"{result['keys']:,} keys, Redis {result['redis']}</text>",
        f'<line x1="{left}" y1="{base}" x2="{width - 20}" y2="{base}" stroke="#333"/>',
    ]
    y_target = base - TARGET * scale
    out.append(
        f'<line x1="{left}" y1="{y_target:.1f}" x2="{width - 20}" y2="{y_target:.1f}" '
        'stroke="#2a2" stroke-dasharray="4 3"/>'
    )
    out.append(
        f'<text x="{width - 20}" y="{y_target - 4:.1f}" text-anchor="end" fill="#2a2">'
        f"target {TARGET} B</text>"
    )
    for index, (name, before, after) in enumerate(groups):
        x0 = left + gap + index * 150
        for b, (label, field, layout, color) in enumerate(bars):
            value = (before if layout == "before" else after)[field]
            height = value * scale
            x = x0 + b * (bar + 2)
            out.append(
                f'<rect x="{x}" y="{base - height:.1f}" width="{bar}" height="{height:.1f}" '
                f'fill="{color}"><title>{label}: {value} B</title></rect>'
            )
            out.append(
                f'<text x="{x + bar / 2}" y="{base - height - 3:.1f}" text-anchor="middle" '
                f'font-size="10">{value:.0f}</text>'
            )
        out.append(f'<text x="{x0 + 55}" y="{base + 16}" text-anchor="middle">{name}</text>')
    for b, (label, _, _, color) in enumerate(bars):
        x = left + b * 150
        out.append(f'<rect x="{x}" y="345" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{x + 16}" y="355">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-sizes", type=int, nargs="+", default=[100, 1024])
    parser.add_argument("--apply-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/memory.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run(args)
    result["seconds"] = round(time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    args.out.with_suffix(".svg").write_text(chart(result))
    print(markdown(result))
    print(f"written to {args.out} (.md, .svg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
