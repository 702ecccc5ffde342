"""Operators' and developers' tools around the worker.

``verify`` (the cache against the database), ``rules check`` (a rules file against the
database), ``trace`` (one row's changes on its topic
and what the version gate does with them, read with the worker's settings), the connectors
applied to Kafka Connect, the live demo and its load (which fills keys as an application
does, through ``aside``), the local stack of real servers (``devstack/``).

May import: core, source, plan, dlq, mode, sink, lineage, notify, app, aside.
"""
