"""The worker waits for what it needs at start instead of exiting: brokers and topics."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cdc_cache.devstack.broker import Broker
from cdc_cache.devstack.process import free_port
from cdc_cache.settings import load_settings
from cdc_cache.worker import resolve_topics

pytestmark = pytest.mark.integration


def test_brokers_that_start_late_are_waited_for(tmp_path: Path) -> None:
    port = free_port()
    broker = Broker(tmp_path, port)
    settings = load_settings(
        rules=Path("r.yaml"), topics=("db1.inv.stock",), brokers=f"127.0.0.1:{port}"
    )

    def start_late() -> None:
        time.sleep(1.5)
        broker.start()
        broker.create_topics({"db1.inv.stock": 1})

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        started = time.monotonic()
        assert resolve_topics(settings, wait_s=60) == ["db1.inv.stock"]
        assert time.monotonic() - started >= 1.5
    finally:
        starter.join()
        broker.stop()


def test_unreachable_brokers_are_named_when_the_wait_ends() -> None:
    settings = load_settings(
        rules=Path("r.yaml"), topics=("t",), brokers=f"127.0.0.1:{free_port()}"
    )
    with pytest.raises(TimeoutError, match=r"brokers 127\.0\.0\.1:\d+"):
        resolve_topics(settings, wait_s=0.5)
