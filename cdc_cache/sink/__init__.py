"""Cache operations applied to Redis, version-gated.

The connection, the apply script (``lua/``) and its arguments, the batch writer with
retries, replicas waited for, failovers detected, version metadata, memory.

May import: core, source, plan, dlq, mode.
"""
