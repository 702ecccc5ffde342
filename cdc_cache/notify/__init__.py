"""Live notifications: the gateway from Redis streams to WebSocket clients.

The gateway server and its settings, client tokens, channel patterns matched in linear time,
per-connection request budgets.

May import: core, sink, fallback, app.
"""
