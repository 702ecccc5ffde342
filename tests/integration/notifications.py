"""What the notification tests expect and find: each change's (channel, position) pairs."""

from __future__ import annotations

from collections import Counter

import orjson

from cdc_cache.core.events import SourceRecord
from cdc_cache.core.keys import ns
from cdc_cache.plan.cache_ops import Notify
from cdc_cache.plan.route import Planned, route
from tests.workload import RULES_YAML

NOTIFY_YAML = (
    RULES_YAML
    + """    notify:
      channel: "stock:{warehouse}"
      fields: [id, qty]
"""
)


def expected_notifications(topic, transactions, rules):
    """Each change's notifications, once each (one partition: every first delivery applies)."""
    expected = Counter()
    for offset, message in enumerate(m for tx in transactions for m in tx):
        routed = route(SourceRecord(topic, 0, offset, message.key, message.value), rules)
        if isinstance(routed, Planned):
            for op in routed.ops:
                if isinstance(op, Notify):
                    expected[(op.channel, orjson.loads(op.payload)["position"])] += 1
    return expected


def notifications_sent(client):
    """Every (channel, position) in the channels' streams, with how often it is there."""
    sent = Counter()
    for channel in client.smembers(ns().channels):
        for _, fields in client.xrange(ns().stream_key(channel.decode())):
            sent[(channel.decode(), orjson.loads(fields[b"p"])["position"])] += 1
    return sent
