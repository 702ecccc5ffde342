"""A token bucket: at most ``rate`` units per second on average, bursts up to ``burst``.

Pure (the caller passes the time), so its arithmetic is tested without waiting. The
gateway keeps one per connection, so that one client's flood of requests costs the event
loop a bounded amount of work however fast it sends.
"""

from __future__ import annotations


class TokenBucket:
    """Starts full; refills at ``rate`` units per second up to ``burst``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            msg = f"a token bucket needs rate > 0 and burst >= 1, not rate={rate} burst={burst}"
            raise ValueError(msg)
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, cost: float, now: float) -> float:
        """Spend ``cost`` units and return 0, or spend nothing and return the seconds to wait.

        A cost above ``burst`` is charged as ``burst``: it empties the bucket, so it
        waits for a full refill instead of never fitting.
        """
        cost = min(float(cost), self._burst)
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = max(self._at, now)
        if self._tokens >= cost:
            self._tokens -= cost
            return 0.0
        return (cost - self._tokens) / self._rate
