"""Summarise a py-spy raw profile: where the samples' time goes, by function.

    python bench/profile_summary.py PROFILE.txt [--top 25]

Prints the share of samples in which each function is on the stack (inclusive) and is the
innermost frame (self); ``--within`` keeps one thread's stacks (the dataflow's, say).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def summarise(
    lines: Sequence[str], within: str | None = None
) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, inclusive samples per function, self samples per function.

    With ``within``, only stacks with a frame containing that text count (one thread's).
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        if within is not None and within not in stack:
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return total, inclusive, own


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` → ``func (module.py)``: lines vary, functions do not."""
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0].rstrip(")")
    return f"{name} ({module})" if module else name


def main(argv: Sequence[str] | None = None) -> int:
    """Print the top functions by inclusive and by self samples."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--within", help="only stacks through this function, e.g. 'run (cdc_cache/app/worker.py'"
    )
    args = parser.parse_args(argv)
    total, inclusive, own = summarise(args.profile.read_text().splitlines(), args.within)
    for title, counts in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title} (% of {total} samples)")
        for name, count in counts.most_common(args.top):
            print(f"{100 * count / total:6.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
