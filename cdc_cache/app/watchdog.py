"""``cdc-cache watchdog`` as a process: the watchdog, its admin port, until stopped.

The watchdog itself is ``cdc_cache.fallback.watchdog``; the gateway runs one too.
"""

from __future__ import annotations

import logging
import signal

from cdc_cache.app.admin import AdminServer
from cdc_cache.app.settings import WatchdogSettings
from cdc_cache.core.retry import Backoff
from cdc_cache.fallback.watchdog import Watchdog
from cdc_cache.sink.connection import connect_when_available

log = logging.getLogger("cdc_cache.watchdog")


def serve(settings: WatchdogSettings) -> None:
    """``cdc-cache watchdog``: watch until SIGTERM or SIGINT, with the admin API if asked.

    Waits for Redis like the worker (refused credentials stop it with a ConfigError).
    """
    client = connect_when_available(settings.redis_url, Backoff(), auth=settings.redis_auth())
    watchdog = Watchdog(client, down_after_s=settings.watchdog_down_after_s)
    admin = None
    if settings.watchdog_port is not None:
        admin = AdminServer(watchdog, settings.watchdog_port, None).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: watchdog.stop())
    try:
        watchdog.run()
    finally:
        watchdog.close()
        if admin is not None:
            admin.close()
        log.info("watchdog stopped")
