"""The alert rules load, and each alert fires (and stays quiet) as its promtool tests say."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(scripts/bootstrap does, or: apt-get install -y prometheus)"
        )
    return found


@pytest.mark.parametrize(
    "check", [["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"]]
)
def test_promtool(promtool: str, check: list[str]) -> None:
    done = subprocess.run(
        [promtool, *check], cwd=RULES_DIR, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_firing_and_quiet_cases() -> None:
    rules = yaml.safe_load((RULES_DIR / "rules.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    cases = [
        case
        for test in yaml.safe_load((RULES_DIR / "rules_test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a not-firing test"


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped)."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_links_to_its_runbook_section() -> None:
    runbooks = RULES_DIR.parents[1] / "docs" / "runbooks.md"
    anchors = heading_anchors(runbooks.read_text())
    rules = yaml.safe_load((RULES_DIR / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"].get("runbook_url", "")
            path, _, anchor = url.partition("#")
            assert path == "docs/runbooks.md", f"{rule['alert']}: runbook_url {url!r}"
            assert anchor == rule["alert"].lower(), f"{rule['alert']}: anchor {anchor!r}"
            assert anchor in anchors, f"{rule['alert']}: docs/runbooks.md has no section {anchor}"


def test_heading_anchors_follow_github() -> None:
    assert heading_anchors("## Lag and mode\n### CdcCacheWorkerDown\ntext # no\n") == {
        "lag-and-mode",
        "cdccacheworkerdown",
    }
