"""Kafka records in: Debezium's messages decoded into change events.

Topic names, envelopes (JSON with or without schemas, flattened), Avro and its Schema
Registry, column values in the application's shape; librdkafka's settings per client, its
log lines, whether the brokers answer.

May import: core.
"""
