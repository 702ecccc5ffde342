"""The cache's consistency, measured continuously (``cdc-cache inspect``).

Sampling, one look at a sample, nines over windows, the report, its edges (Redis, the
database, Kafka) and its process.

May import: core, source, plan, mode, sink, app, tools.
"""
