"""The DLQ page of a real worker, in headless Chromium: sign in, inspect, replay.

The worker runs as a process against tansu and Redis. One change is refused by Redis
(its version key holds a list: WRONGTYPE) and lands in the DLQ; the cause is fixed,
and clicking Replay on the page writes the row into the cache and shows the outcome.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cdc_cache.core.keys import ns
from cdc_cache.tools.devstack.process import free_port
from tests.integration.services import worker
from tests.integration.topics import produce, unique_topic
from tests.workload import Workload

pytestmark = pytest.mark.integration


def request(
    url: str, token: str | None = None, method: str = "GET", body: bytes | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, body, headers, method=method), timeout=10
        ) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_entries(base: str, token: str, service: Any, timeout: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            status, body = request(f"{base}/dlq/api/entries", token)
        except (urllib.error.URLError, ConnectionError):
            status, body = 0, None  # admin server not up yet
        if status == 200 and body["entries"]:
            return list(body["entries"])
        time.sleep(0.3)
    pytest.fail(f"no DLQ entry within {timeout} s:\n{service.tail()}")


def test_replay_from_the_page_writes_the_row_and_shows_the_outcome(
    broker, redis_server, redis_client, browser, tmp_path
):
    topic, dlq_topic = unique_topic(), f"dlq-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 1})
    # Committed a minute ago: replayed within the tombstone TTL, the change writes its row.
    workload = Workload(seed=5, topic=topic, ts_ms=int(time.time() * 1000) - 60_000)
    (insert,) = workload.transactions(1)[0]
    ((key, row),) = workload.expected_cache().items()
    redis_client.rpush(ns().version_key(key), b"not a position")  # the json SET is refused

    port, token = free_port(), f"tok-{uuid.uuid4().hex}"
    service = worker(tmp_path, broker.bootstrap, redis_server.address(), [topic])
    service.env.update(
        CDC_CACHE_METRICS_PORT=str(port),
        CDC_CACHE_ADMIN_TOKEN=token,
        CDC_CACHE_DLQ_TOPIC=dlq_topic,
    )
    base = f"http://127.0.0.1:{port}"
    service.start()
    try:
        produce(broker.bootstrap, [insert])
        (entry,) = wait_for_entries(base, token, service)
        assert entry["kind"] == "redis_refused" and entry["table"] == "inventory.stock"

        # No page, listing or action without the token.
        assert request(f"{base}/dlq")[0] == 401
        assert request(f"{base}/dlq/api/entries")[0] == 401
        assert request(f"{base}/dlq/api/entries", "wrong")[0] == 401
        assert request(f"{base}/dlq/api/replay", None, "POST", b'{"all": true}')[0] == 401
        assert redis_client.get(key) is None

        redis_client.delete(ns().version_key(key))  # the cause, fixed
        browser.get(f"{base}/dlq")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "sign-in").click()
        selector = f'tr[data-id="{entry["id"]}"]'
        # The page re-renders its rows after every action: look them up afresh each time.
        wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
        listed = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector).text)
        assert "redis_refused" in listed and f"{topic}[0]@0" in listed

        browser.find_element(By.CSS_SELECTOR, f"{selector} button.show").click()
        wait.until(lambda d: d.find_element(By.ID, "detail-stack").text)
        assert "RefusedByRedis" in browser.find_element(By.ID, "detail-stack").text
        assert "WRONGTYPE" in browser.find_element(By.ID, "detail-fields").text

        browser.find_element(By.CSS_SELECTOR, f"{selector} button.replay").click()
        wait.until(
            lambda d: "applied" in d.find_element(By.CSS_SELECTOR, f"{selector} td.outcome").text
        )
        wait.until(lambda d: "replayed 1: 1 applied" in d.find_element(By.ID, "status").text)
        assert orjson.loads(redis_client.get(key)) == row

        # The same click again changes nothing and says so.
        browser.find_element(By.CSS_SELECTOR, f"{selector} button.replay").click()
        wait.until(
            lambda d: "duplicate" in d.find_element(By.CSS_SELECTOR, f"{selector} td.outcome").text
        )
        assert orjson.loads(redis_client.get(key)) == row
        service.check_alive()
    finally:
        service.stop()
