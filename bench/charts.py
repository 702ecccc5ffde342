"""The benchmark's results as PNG charts, drawn from the results JSON (headless, Agg).

Reads ``bench/results/throughput.json`` and ``bench/results/soak.json`` (either may be
absent) and writes, next to them:

* ``throughput.png``: events/s of the worker (1 process, 2 processes, 1 process with 2
  threads) against the plain consumer loop and the two raw limits, with the target line;
* ``latency.png``: the distribution of broker ack → applied at full and half rate, and,
  where the results hold the split, the broker's and the worker's share of it, and the
  worker's own time from its histogram (p50, p95, p99);
* ``soak.png``: the worker's RSS over the soak.

The charts live with the JSON they are drawn from, so ``make bench`` rewrites both
together and ``docs/benchmarks.md`` embeds them from there.

    python bench/charts.py [--throughput bench/results/throughput.json]
                           [--soak bench/results/soak.json] [--out-dir bench/results]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import LogLocator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.probes import worker_share

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results"
TARGET_EVENTS_PER_S = 50_000
LATENCY_BOUND_MS = 100
# Log axes cannot show a share of 0 or below (the two consumers fetch independently, so a
# probe's worker share can be negative): such values are drawn at this floor.
FLOOR_MS = 0.1
# No timestamp or version in the files, so an unchanged result redraws byte for byte.
PNG_METADATA: dict[str, str | None] = {"Software": None}


@dataclass(frozen=True)
class Bar:
    """One bar of the throughput chart."""

    label: str
    events_per_s: float
    kind: str  # "worker", "baseline" or "limit"


def throughput_bars(result: Mapping[str, Any]) -> list[Bar]:
    """The bars, in events/s (the baseline's and consume-only's records/s converted)."""
    load = result["load"]
    per_record = load["events"] / load["records"]
    return [
        Bar("Kafka: consume only", result["consume_only"]["records_per_s"] * per_record, "limit"),
        Bar("Redis: apply script, pipelined", result["redis_lua"]["events_per_s"], "limit"),
        Bar("worker, 1 process", result["product_1proc"]["events_per_s"], "worker"),
        Bar("worker, 2 processes", result["product_2proc"]["events_per_s"], "worker"),
        Bar(
            "worker, 1 process, 2 threads",
            result["product_1proc_2threads"]["events_per_s"],
            "worker",
        ),
        Bar(
            "plain consumer loop (baseline)",
            result["baseline"]["records_per_s"] * per_record,
            "baseline",
        ),
    ]


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted values (at least ``FLOOR_MS``) and the fraction of samples at or below each."""
    ordered = sorted(max(v, FLOOR_MS) for v in values)
    count = len(ordered)
    return ordered, [(n + 1) / count for n in range(count)]


def summary_points(summary: Mapping[str, float]) -> tuple[list[float], list[float]]:
    """A coarse CDF from percentiles alone, for results that kept no per-probe samples."""
    points = [("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99), ("max_ms", 1.0)]
    return [summary[name] for name, _ in points], [q for _, q in points]


@dataclass(frozen=True)
class Curve:
    """One CDF of a latency chart, with the percentiles its legend names."""

    label: str
    xs: list[float]
    ys: list[float]
    p50_ms: float
    p99_ms: float
    from_samples: bool


def latency_curves(phase: Mapping[str, Any]) -> list[Curve]:
    """CDFs of one latency phase: the total, then the broker's and worker's share if kept.

    Where the phase has the worker's own time (its histogram's percentiles), a last curve
    draws it through p50, p95 and p99.
    """
    samples = phase.get("probe_ms")
    if not samples:
        return [Curve("ack → applied", *summary_points(phase), *_p50_p99(phase), False)]
    split = phase["split"]
    own = phase.get("worker_own_time") or {}
    owned = (
        [
            Curve(
                "worker's own time (histogram)",
                [own["p50_ms"], own["p95_ms"], own["p99_ms"]],
                [0.5, 0.95, 0.99],
                *_p50_p99(own),
                False,
            )
        ]
        if own.get("p50_ms") is not None
        else []
    )
    return [
        Curve("ack → applied", *cdf(samples["ack_to_applied"]), *_p50_p99(phase), True),
        Curve(
            "broker: ack → delivered",
            *cdf(samples["ack_to_delivered"]),
            *_p50_p99(split["ack_to_delivered"]),
            True,
        ),
        Curve(
            "worker: delivered → applied",
            *cdf(worker_share(samples)),
            *_p50_p99(split["delivered_to_applied"]),
            True,
        ),
        *owned,
    ]


def _p50_p99(summary: Mapping[str, float]) -> tuple[float, float]:
    return summary["p50_ms"], summary["p99_ms"]


def soak_series(soak: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """Minutes since the start, RSS in MiB."""
    samples = soak["rss_mb_samples"]
    return [t / 60 for t, _ in samples], [mb for _, mb in samples]


COLOURS = {"limit": "#9e9e9e", "worker": "#1f77b4", "baseline": "#ff7f0e"}


def draw_throughput(result: Mapping[str, Any], path: Path) -> None:
    bars = throughput_bars(result)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [b.label for b in bars]
    values = [b.events_per_s for b in bars]
    ax.barh(labels, values, color=[COLOURS[b.kind] for b in bars])
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
    ax.axvline(TARGET_EVENTS_PER_S, color="#d62728", linestyle="--", linewidth=1)
    ax.text(TARGET_EVENTS_PER_S, len(bars) - 0.5, " target 50,000", color="#d62728", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max([*values, TARGET_EVENTS_PER_S]) * 1.18)
    ax.set_xlabel("events/s")
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
    load = result["load"]
    ax.set_title(
        f"Throughput: {load['events']:,} events, {result.get('measured_at', '')[:10]}",
        fontsize=10,
    )
    _save(fig, path)


def draw_latency(result: Mapping[str, Any], path: Path) -> None:
    phases = [(name, result[name]) for name in ("latency_full", "latency_half") if name in result]
    split = all("probe_ms" in phase for _, phase in phases)
    fig, axes = plt.subplots(
        1, 1 + len(phases) * split, figsize=(5 + 4.5 * len(phases) * split, 4.8), squeeze=False
    )
    total = axes[0][0]
    for (name, phase), colour in zip(phases, ("#d62728", "#1f77b4"), strict=False):
        curve = latency_curves(phase)[0]
        rate = f"{name.split('_')[1]} rate, {phase['achieved_rate']:,} events/s"
        _plot(total, curve, colour, rate)
    _latency_axes(total, "Processor latency: broker ack → applied in Redis")
    for ax, (name, phase) in zip(axes[0][1:], phases, strict=False):
        curves = latency_curves(phase)
        colours = ("#555555", "#9467bd", "#2ca02c", "#ff7f0e")[: len(curves)]
        for curve, colour in zip(curves, colours, strict=True):
            _plot(ax, curve, colour, curve.label)
        negative = phase["split"]["worker_share_negative"]
        _latency_axes(
            ax,
            f"Split at {name.split('_')[1]} rate ({phase['achieved_rate']:,} events/s)\n"
            f"worker share ≤ 0 for {negative:.1%} of probes (drawn at {FLOOR_MS} ms)",
        )
    _save(fig, path)


def _plot(ax: Axes, curve: Curve, colour: str, label: str) -> None:
    """The CDF (a step per sample, or a line through the percentiles) and its p50/p99."""
    percentiles = "" if curve.from_samples else " (percentiles only)"
    ax.plot(
        curve.xs,
        curve.ys,
        drawstyle="steps-post" if curve.from_samples else "default",
        color=colour,
        label=f"{label}: p50 {curve.p50_ms:g} ms, p99 {curve.p99_ms:g} ms{percentiles}",
    )
    ax.plot([max(curve.p50_ms, FLOOR_MS)], [0.5], "o", color=colour, markersize=4)
    ax.plot([max(curve.p99_ms, FLOOR_MS)], [0.99], "^", color=colour, markersize=5)


def _latency_axes(ax: Axes, title: str) -> None:
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if high / low < 2_000 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_minor_formatter(lambda x, _: "")
    ax.axvline(LATENCY_BOUND_MS, color="#d62728", linestyle="--", linewidth=1)
    ax.text(LATENCY_BOUND_MS, 0.03, " 100 ms", color="#d62728", fontsize=7)
    ax.axhline(0.99, color="#bbbbbb", linewidth=0.6)
    ax.axhline(0.5, color="#bbbbbb", linewidth=0.6)
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("fraction of probes ≤ x")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.grid(True, which="major", alpha=0.3)


def draw_soak(result: Mapping[str, Any], path: Path) -> None:
    soak = result["soak"]
    minutes, mb = soak_series(soak)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(minutes, mb, color="#1f77b4", marker=".", markersize=3)
    ax.set_xlabel("minutes")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_ylim(0, max(mb) * 1.15)
    ax.grid(True, alpha=0.3)
    ax.set_title(
        f"Worker memory over the soak: {soak['rate']:,} changes/s for {soak['seconds']} s, "
        f"max {soak['rss_mb_max']} MiB",
        fontsize=10,
    )
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def draw(throughput: Path | None, soak: Path | None, out_dir: Path) -> list[Path]:
    """Every chart whose results file exists; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if throughput is not None and throughput.exists():
        result = json.loads(throughput.read_text())
        for name, drawer in (("throughput", draw_throughput), ("latency", draw_latency)):
            drawer(result, out_dir / f"{name}.png")
            written.append(out_dir / f"{name}.png")
    if soak is not None and soak.exists():
        draw_soak(json.loads(soak.read_text()), out_dir / "soak.png")
        written.append(out_dir / "soak.png")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--throughput", type=Path, default=RESULTS / "throughput.json")
    parser.add_argument("--soak", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for path in draw(args.throughput, args.soak, args.out_dir):
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
