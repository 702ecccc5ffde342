"""The applications' side of the cache.

Cache-aside reads with leases that honour the mode, and fills written exactly as the worker
writes them.

May import: core, source, plan, sink.
"""
