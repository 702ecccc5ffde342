"""Bytewax dataflows: the only place the stream engine is named."""
