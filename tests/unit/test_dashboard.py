"""The dashboard and the alert rules query only metrics the worker exports."""

import json
import platform
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from cdc_cache.core import metrics

DEPLOY = Path(__file__).parents[2] / "deploy"
DASHBOARD = json.loads((DEPLOY / "grafana" / "cdc-cache.json").read_text())
RULES = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
PROMETHEUS_OWN = {"up"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}
PROMQL_WORDS = {
    *("by", "without", "on", "ignoring", "group_left", "group_right"),
    *("bool", "offset", "and", "or", "unless"),
}

# Removed before looking for names, in this order: strings; label matchers, ranges and the
# label lists of by/without/on/ignoring; numbers and durations.
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
NOT_NAMES = re.compile(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)")
NUMBERS = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?[smhdwy]?\b")
IDENTIFIER = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or keywords."""
    bare = NUMBERS.sub(" ", NOT_NAMES.sub(" ", STRINGS.sub('""', expr)))
    return {
        name for name, call in IDENTIFIER.findall(bare) if not call and name not in PROMQL_WORDS
    }


def exported() -> set[str]:
    """Every series name the worker's metrics module registers, suffixes included."""
    names = set()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]


def rule_exprs() -> Iterator[tuple[str, str]]:
    for group in RULES["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


EXPRS = [*dashboard_exprs(), *rule_exprs()]


def test_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y{z}"}[5m]))) > 1e3 '
        'and on (job) up{job="w"} == 0 or vector(0) unless b:rec offset 1h'
    )
    assert metric_names(expr) == {"a_bucket", "up", "b:rec"}


def test_exported_names_include_suffixes() -> None:
    names = exported()
    assert {
        "cdc_cache_records_total",
        "cdc_cache_mode",
        "cdc_cache_apply_batch_seconds_bucket",
    } <= names


@pytest.mark.parametrize(("where", "expr"), EXPRS, ids=[where for where, _ in EXPRS])
def test_queries_use_exported_metrics(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - exported() - PROMETHEUS_OWN
    assert not unknown, (
        f"{where} queries {sorted(unknown)}, which cdc_cache.core.metrics does not export"
    )


def test_panels_have_unique_ids_and_a_query() -> None:
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["type"] == "row" or panel["targets"], panel["title"]


def test_an_index_left_absent_until_a_snapshot_has_its_panel_beside_its_alert() -> None:
    # The alert says which table to snapshot; the panel shows when and how often, by table.
    counted = "cdc_cache_absent_index_ops_total"
    (alert,) = (expr for where, expr in rule_exprs() if "IndexAbsentUntilSnapshot" in where)
    assert counted in alert and "by (job, table)" in alert
    assert any(counted in expr and "by (table)" in expr for _, expr in dashboard_exprs())


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?(?!\s*\()")


@pytest.mark.parametrize(
    ("where", "expr"), list(dashboard_exprs()), ids=[where for where, _ in dashboard_exprs()]
)
def test_every_dashboard_query_follows_the_job_and_namespace_variables(
    where: str, expr: str
) -> None:
    """Each selector filters on ``$job`` and on ``$instance``: the processes of ``$namespace``."""
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["job"]["includeAll"], "the job variable offers all jobs"
    for name in metric_names(expr):
        selectors = [m.group(2) or "" for m in SELECTOR.finditer(expr) if m.group(1) == name]
        assert all('job=~"$job"' in s for s in selectors), f"{where}: {name} ignores $job"
        assert all('instance=~"$instance"' in s for s in selectors), (
            f"{where}: {name} ignores $instance, so the namespace variable does not filter it"
        )


def test_the_namespace_variable_narrows_the_instances_every_panel_reads() -> None:
    """namespace → job → instance, all from build_info; "All" instances are the namespace's.

    A fixed ``allValue`` on ``instance`` (e.g. ``.+``) would match every process whatever
    the namespace, so it must be left to Grafana, which then ORs the listed instances.
    """
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    order = [v["name"] for v in DASHBOARD["templating"]["list"]]
    assert order.index("namespace") < order.index("job") < order.index("instance")
    namespace, job, instance = (variables[n] for n in ("namespace", "job", "instance"))
    assert namespace["query"]["query"] == "label_values(cdc_cache_build_info, namespace)"
    assert 'cdc_cache_build_info{namespace=~"$namespace"}' in job["query"]["query"]
    assert instance["query"]["query"] == (
        'label_values(cdc_cache_build_info{namespace=~"$namespace", job=~"$job"}, instance)'
    )
    assert instance["includeAll"] and "allValue" not in instance
    assert "cdc_cache_build_info" in exported()


def test_build_info_names_the_installed_version_and_the_namespace() -> None:
    from importlib.metadata import version

    from prometheus_client import REGISTRY

    from cdc_cache.core.keys import DEFAULT_NAMESPACE, ns, use_namespace

    labels = {"version": version("cdc-cache"), "python": platform.python_version()}
    chosen = ns().namespace
    try:
        use_namespace("orders-eu")
        assert (
            REGISTRY.get_sample_value("cdc_cache_build_info", labels | {"namespace": "orders-eu"})
            == 1
        )
        use_namespace(DEFAULT_NAMESPACE)
        assert REGISTRY.get_sample_value("cdc_cache_build_info", labels | {"namespace": "cdc"}) == 1
        assert (
            REGISTRY.get_sample_value("cdc_cache_build_info", labels | {"namespace": "orders-eu"})
            is None
        )
    finally:
        use_namespace(chosen)
