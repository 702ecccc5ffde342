"""Bytewax dataflows: the only place the stream engine is named.

``invalidation`` assembles the flow from one ``config.FlowConfig``; its source (``source``)
and sinks (``sink``) are Bytewax's classes around the package's parts; ``run`` runs it
with recovery.

May import: core, source, plan, dlq, mode, sink, lineage, continuity.
"""
