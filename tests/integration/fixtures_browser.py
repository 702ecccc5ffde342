"""Pytest plugin: a headless Chromium driven by Selenium, for the web pages' browser tests.

Uses Debian's ``chromium`` and ``chromium-driver`` (installed by ``scripts/bootstrap``),
so no browser is downloaded at test time. One browser per session; each test gets it with
cookies and storage cleared.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


@pytest.fixture(scope="session")
def chromium_session() -> Iterator[webdriver.Chrome]:
    binary = shutil.which("chromium")
    driver_binary = shutil.which("chromedriver")
    if binary is None or driver_binary is None:
        pytest.fail("headless Chromium is missing: install Debian chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_binary), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium_session: webdriver.Chrome) -> Iterator[webdriver.Chrome]:
    """The session's browser, on a blank page with no cookies or storage left over."""
    chromium_session.get("about:blank")
    chromium_session.delete_all_cookies()
    yield chromium_session
    chromium_session.get("about:blank")
