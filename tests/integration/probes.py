"""What tests read from a process's admin port: status, metrics, readiness, reports."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.services import Service
from tests.integration.waiting import wait_until


def admin_get(port: int, path: str) -> tuple[int, bytes]:
    """GET a path of the worker's admin port: status and body (error statuses too)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def metric(port: int, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The summed value of the worker's samples named ``name`` matching ``labels`` (0 if none)."""
    status, body = admin_get(port, "/metrics")
    assert status == 200, body
    wanted = labels or {}
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items())
    )


def inspection(port: int) -> dict[str, Any]:
    """The inspector's report (``GET /inspect``)."""
    status, body = admin_get(port, "/inspect")
    assert status == 200, body
    report: dict[str, Any] = orjson.loads(body)
    return report


def wait_ready(service: Service, port: int, timeout: float = 60) -> None:
    """Until ``GET /readyz`` on ``port`` answers 200 (the process must stay alive)."""

    def ready() -> bool:
        try:
            return admin_get(port, "/readyz")[0] == 200
        except OSError:
            return False

    wait_until(f"{service.argv[3]} ready", ready, timeout, alive=[service], interval=0.2)


def settled_inspection(port: int, service: Service, timeout: float = 60) -> dict[str, Any]:
    """The inspector's report once it judged a sample and every re-check ended.

    Nothing pending is also what an inspector still behind on its topics reports, so at
    least one judged check is waited for too.
    """

    def settled() -> bool:
        report = inspection(port)
        return report.get("pending") == 0 and sum(report.get("checks", {}).values()) > 0

    wait_until(
        "inspector done with its samples",
        settled,
        timeout,
        alive=[service],
        interval=0.2,
    )
    return inspection(port)
