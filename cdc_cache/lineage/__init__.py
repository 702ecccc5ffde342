"""Source log lineages: a new log history told from changes re-sent or late.

Each change judged per partition (pure), the epoch registry in Redis (``lua/``), and the
dataflow's tracker that gives every change its lineage's epoch.

May import: core, source, plan, mode, sink.
"""
