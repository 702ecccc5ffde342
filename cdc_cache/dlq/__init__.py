"""What cannot be processed: dead letters.

Entries that can always be written (pure), the reporter every rejection goes through, and
the dead-letter topic on Kafka.

May import: core, source, plan.
"""
