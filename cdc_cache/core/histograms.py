"""Many observations of one histogram at once: each bucket incremented once per batch.

``prometheus_client`` has no observe-with-count, and ``Histogram.observe`` takes a lock
per call (twice: its sum and its bucket); the writer observes two latencies per applied
change. :func:`observe_all` counts a batch's values per bucket first, then increments each
bucket by its count and the sum by the batch's total: the exposed buckets, count and sum
are those the same observations one by one give (a unit test compares the two).
:func:`quantile` reads a quantile back from exposed buckets, as Prometheus does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence

from prometheus_client import Histogram


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of cumulative ``(le, count)`` buckets, as Prometheus interpolates.

    As ``histogram_quantile`` does: None without observations, the highest finite bound
    when it falls in ``+Inf``.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = le, count
    return lower


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(amount)`` for each of ``amounts`` (unlabelled or one child).

    An amount falls into the first bucket whose upper bound is at least it, as in
    ``observe`` (the last bound is +Inf). NaN is not an amount any caller observes.
    """
    if not amounts:
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    buckets = histogram._buckets
    bounds = histogram._upper_bounds
    for index, count in Counter(bisect_left(bounds, amount) for amount in amounts).items():
        buckets[index].inc(count)
    histogram._sum.inc(sum(amounts))
