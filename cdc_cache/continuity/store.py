"""Discontinuities and the operators' decisions about them, in Redis.

Workers record each discontinuity they hold the cache in ``ttl`` for; ``cdc-cache
continuity`` reads them and records a decision, which the worker holding the partition
acts on (at once if it runs, else when it starts). Two hashes, one field per
``topic[partition]`` holding JSON, so they work the same on Redis Cluster:

- ``cdc:continuity``: ``{kind, reason, key, state, stored, observed, detected_ms}``,
  ``state`` being ``held`` (waiting for a decision) or ``rereading``;
- ``cdc:continuity:decisions``: ``{action, key, decided_ms}``; ``key`` names the
  discontinuity it resolves, so a leftover decision never resolves a later one.

Both fields go once the partition is continuous again. The hold itself is not kept here:
a worker finds the discontinuity again in its recovery store when it restarts.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson

from cdc_cache.continuity.model import Action, Discontinuity
from cdc_cache.core.keys import ns
from cdc_cache.sink.connection import Client


class ContinuityStore:
    """The records and decisions (shared by the worker and the CLI)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def report(self, found: Discontinuity, state: str, now_ms: int) -> None:
        """Record (or update) a discontinuity the worker holds ``ttl`` for."""
        record = {
            "topic": found.topic,
            "partition": found.partition,
            "kind": found.kind.value,
            "key": found.key,
            "reason": found.reason,
            "state": state,
            "ways_forward": [action.value for action in found.ways_forward],
            "stored": asdict(found.stored),
            "observed": asdict(found.observed),
            "detected_ms": now_ms,
        }
        self._client.hset(ns().continuity, found.where, orjson.dumps(record))

    def resolved(self, where: str) -> None:
        """The partition is continuous again: its record and decision go."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hdel(ns().continuity, where)
        pipe.hdel(ns().continuity_decisions, where)
        pipe.execute()

    def records(self) -> dict[str, dict[str, Any]]:
        """Every recorded discontinuity, by ``topic[partition]``."""
        raw = self._client.hgetall(ns().continuity)
        return {field.decode(): orjson.loads(value) for field, value in raw.items()}

    def decision(self, where: str) -> tuple[Action, str] | None:
        """The decision recorded for ``where``: its action and the key it resolves."""
        raw = self._client.hget(ns().continuity_decisions, where)
        if raw is None:
            return None
        decided = orjson.loads(raw)
        return Action(decided["action"]), str(decided["key"])

    def decide(self, where: str, action: Action, key: str, now_ms: int) -> None:
        """Record an operator's decision for the discontinuity ``key`` at ``where``."""
        decided = {"action": action.value, "key": key, "decided_ms": now_ms}
        self._client.hset(ns().continuity_decisions, where, orjson.dumps(decided))
