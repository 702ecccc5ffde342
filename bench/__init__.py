"""Benchmarks of the local stack: commit latency, throughput, memory."""
