"""The cache mode (cdc or ttl) decided, without Redis.

The controller ``(state, signal) -> (state, decision)``, holds raised by whatever finds the
cache cannot be known right, lag per partition, the mode records read strictly, tables
falling back on their own.

May import: core, source, plan, dlq.
"""
