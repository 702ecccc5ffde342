"""The gateway's live page in headless Chromium, on one Redis server and on a Cluster.

Changes are written the way the worker writes them (plan + apply script); the page replays
what the channels' streams hold, then shows each new change as it is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.fixtures_redis import RedisTarget
from tests.integration.test_gateway import gateway_process, publish, token

pytestmark = pytest.mark.integration


def _qty(browser: Any, sku: int, warehouse: str) -> str | None:
    """The quantity the page shows for ``sku`` in ``warehouse`` (None: no such cell yet)."""
    value: str | None = browser.execute_script(
        "const td = document.getElementById(arguments[0]);"
        "return td ? td.dataset.qty || null : null;",
        f"cell-{sku}-{warehouse}",
    )
    return value


def _shows(sku: int, warehouse: str) -> Callable[[Any], bool]:
    """Whether the page shows ``sku``'s change in ``warehouse`` (its qty is its sku)."""
    return lambda b: _qty(b, sku, warehouse) == str(sku)


def test_the_live_page_replays_the_streams_then_shows_each_change_as_applied(
    tmp_path: Path, redis_target: RedisTarget, browser: Any
) -> None:
    warehouses = ("north", "south", "east")
    for n, warehouse in enumerate(warehouses, start=1):  # before the page opens: replayed
        publish(redis_target.client, n, warehouse)
    gateway, port = gateway_process(tmp_path, redis_target.url)
    try:
        browser.get(f"http://127.0.0.1:{port}/?token={token('inventory:*')}")
        WebDriverWait(browser, 30).until(
            lambda b: (
                b.find_element(By.ID, "status").text == "live"
                and all(_shows(n, w)(b) for n, w in enumerate(warehouses, start=1))
            )
        )
        for n, warehouse in enumerate(warehouses, start=11):  # live, channel by channel
            publish(redis_target.client, n, warehouse)
            WebDriverWait(browser, 30).until(_shows(n, warehouse))
        browser.get("about:blank")
        assert gateway.terminate(10) == 0, gateway.tail()
    finally:
        gateway.stop()
