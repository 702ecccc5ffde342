"""cdc-cache: turn Debezium change events into version-gated Redis cache operations."""

__version__ = "0.1.0"
