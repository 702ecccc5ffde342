"""Operators' and developers' tools around the worker.

``verify`` (the cache against the database), the connectors applied to Kafka Connect, the
live demo and its load, the local stack of real servers (``devstack/``).

May import: core, source, plan, sink, notify.
"""
