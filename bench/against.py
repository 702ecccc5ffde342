"""One CPU benchmark on two commits side by side: what a change costs the hot path.

Checks ``--base`` out into a temporary git worktree and runs ``bench/decode_plan.py`` of
each checkout (this one and the base) with that checkout's code, alternating, ``--rounds``
times; the best round of each case counts for each side, so a load that comes and goes
skews both alike. Prints a Markdown table of µs per record and the change, and writes it
to ``--out`` as JSON.

    .venv/bin/python bench/against.py --base 9ab8ca9 [--rounds 6] [--out FILE]

With ``--worker``, the whole worker instead: ``bench/throughput.py --code-ab`` drains the
same loaded events with the base's worker and this checkout's, alternating, ``--rounds``
times, and reports both sides' events/s and worker CPU per event (a quiet machine only).

    .venv/bin/python bench/against.py --base 9ab8ca9 --worker [--rounds 3] [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("wire_us", "natural_us")


def git(*args: str) -> str:
    """Run git in this repository; its output."""
    command = ["git", "-C", str(ROOT), *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def run_once(tree: Path, out: Path) -> dict[str, Any]:
    """One round of ``tree``'s decode_plan benchmark with ``tree``'s code on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(tree / "bench/decode_plan.py"), "--rounds", "1"]
    subprocess.run([*command, "--out", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def best(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The fastest round of every case and rules version."""
    cases = [name for name in rounds[0] if name != "machine"]
    return {c: {v: min(r[c][v] for r in rounds) for v in VERSIONS} for c in cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/against.json")
    parser.add_argument("--worker", action="store_true", help="compare the whole worker")
    parser.add_argument("--events", type=int, default=200_000, help="with --worker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdc-bench-") as scratch:
        base_tree = Path(scratch) / "base"
        git("worktree", "add", "-q", "--detach", str(base_tree), args.base)
        try:
            if args.worker:
                command = [sys.executable, str(ROOT / "bench/throughput.py"), "--events"]
                command += [str(args.events), "--code-ab", str(base_tree)]
                command += ["--rounds", str(args.rounds), "--out", str(args.out)]
                subprocess.run(command, check=True)
                return
            sides: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
            for n in range(args.rounds):
                for side, tree in (("base", base_tree), ("head", ROOT)):
                    sides[side].append(run_once(tree, Path(scratch) / "round.json"))
                print(f"round {n + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            git("worktree", "remove", "--force", str(base_tree))
    base, head = best(sides["base"]), best(sides["head"])
    head_rev = git("rev-parse", "--short", "HEAD")
    print(f"| records, rules | {args.base} (µs) | {head_rev} (µs) | change |")
    print("|---|---|---|---|")
    for case in base:
        for version in VERSIONS:
            before, after = base[case][version], head[case][version]
            label = "version 1" if version == "wire_us" else "version 2"
            print(
                f"| {case}, {label} | {before:.2f} | {after:.2f} | "
                f"{(after / before - 1) * 100:+.1f} % |"
            )
    args.out.write_text(
        json.dumps(
            {
                "base": args.base,
                "head": head_rev,
                "base_us": base,
                "head_us": head,
                "machine": {
                    "python": platform.python_version(),
                    "nproc": os.cpu_count(),
                    "loadavg": os.getloadavg(),
                    "rounds": args.rounds,
                },
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
