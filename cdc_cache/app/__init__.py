"""The worker process and its edges.

Settings (flags over environment over a file), the worker around the dataflow, the admin
HTTP server and its routes, the DLQ page and replay, the watchdog as a process.

May import: core, source, plan, dlq, mode, sink, lineage, continuity, fallback, dataflows.
"""
