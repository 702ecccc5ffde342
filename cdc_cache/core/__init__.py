"""What every part shares.

Source positions, decoded changes and their origin, typed errors, the cache key layout,
retries with backoff, every metric, JSON logs, redaction and scrubbing of secrets,
Debezium's logical types. Pure, or small helpers around the standard library.

May import: nothing else of the package.
"""
