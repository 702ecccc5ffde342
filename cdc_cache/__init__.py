"""cdc-cache: turn Debezium change events into version-gated Redis cache operations."""

from importlib import metadata

__version__ = metadata.version("cdc-cache")
