"""The cache mode acted upon in Redis.

The mode records, TTLs shortened, the runtime loop of each worker process, and the watchdog
that stands in for a worker that is down.

May import: core, source, plan, dlq, mode, sink.
"""
