"""Stored Kafka offsets that still mean what they meant.

The rules (pure), topic ids from the brokers, the guard around each source partition, the
discontinuities and operators' decisions in Redis.

May import: core, source, mode, sink.
"""
