"""deploy/k8s validates against Kubernetes' schemas offline, and its pieces fit together.

Core kinds are checked strictly (unknown fields refused) with kubernetes-validate's bundled
schemas; ServiceMonitor and PrometheusRule with the pydantic models generated from the
Prometheus Operator's CRDs (cloudcoil-models-prometheus-operator), unknown fields refused.
"""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring

from cdc_cache.app.load import load, load_settings
from cdc_cache.app.settings import WatchdogSettings
from cdc_cache.inspector.settings import InspectSettings
from cdc_cache.notify.settings import GatewaySettings
from cdc_cache.plan.rules_loader import load_rules

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests target (the pod-index label is 1.28+) and the newest.
K8S_VERSIONS = ["1.28.0", "1.37.0"]
CRD_MODELS = {
    "ServiceMonitor": monitoring.ServiceMonitor,
    "PrometheusRule": monitoring.PrometheusRule,
}
GATEWAY_SETTINGS = set(GatewaySettings.model_fields)

DOCS = [
    (path.name, doc)
    for path in sorted(K8S.glob("*.yaml"))
    if path.name != "kustomization.yaml"
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in DOCS if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}"
    return found[0]


def _validate(doc: dict, version: str) -> None:
    if doc["kind"] in CRD_MODELS:
        CRD_MODELS[doc["kind"]].model_validate(doc, extra="forbid", strict=True)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "doc", [d for _, d in DOCS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS]
)
def test_manifest_matches_its_schema(doc, version):
    _validate(doc, version)


@pytest.mark.parametrize(
    ("kind", "path", "typo"),
    [
        ("StatefulSet", ["spec", "template", "spec"], "securityContexts"),
        ("ServiceMonitor", ["spec", "endpoints", 0], "paht"),
        ("PrometheusRule", ["spec", "groups", 0, "rules", 0], "fro"),
    ],
)
def test_validation_refuses_an_unknown_field(kind, path, typo):
    doc = yaml.safe_load(yaml.safe_dump(_one(kind, "cdc-cache" if kind != "StatefulSet" else None)))
    node = doc
    for step in path:
        node = node[step]
    node[typo] = "x"
    with pytest.raises(Exception, match=typo):
        _validate(doc, K8S_VERSIONS[-1])


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {i["name"] for i in kustomization["images"]} == {
        c["image"].split(":")[0]
        for _, d in DOCS
        if d["kind"] in ("StatefulSet", "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        + d["spec"]["template"]["spec"].get("initContainers", [])
    }


def test_prometheus_rule_is_the_promtool_tested_rules_file():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    assert _one("PrometheusRule")["spec"]["groups"] == rules["groups"], (
        "deploy/k8s/monitoring.yaml differs from deploy/prometheus/rules.yml: run scripts/sync-k8s-rules"
    )


def _worker_settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(_one("ConfigMap", "cdc-cache-worker")["data"]["worker.yaml"])
    return path


def _worker_pod() -> dict:
    return _one("StatefulSet")["spec"]["template"]["spec"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_worker_cluster_addresses_follow_the_pods_and_the_headless_service(tmp_path):
    statefulset = _one("StatefulSet")
    secret = tmp_path / "secret"
    secret.write_text("x")
    settings = load_settings(
        _worker_settings_file(tmp_path),
        process_id=0,
        redis_password_file=secret,
        admin_token_file=secret,
    )
    service = _one("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    assert settings.addresses == [
        f"{name}-{i}.{service['metadata']['name']}:{ports['cluster']}" for i in range(replicas)
    ]
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert settings.recovery_partitions >= replicas
    (worker,) = _worker_pod()["containers"]
    process_id = _env(worker)["CDC_CACHE_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert process_id == "metadata.labels['apps.kubernetes.io/pod-index']"
    container_ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert container_ports == {"cluster": ports["cluster"], "metrics": settings.metrics_port}
    # the worker creates its own share of a new recovery store (cdc_cache.app.worker)
    assert "initContainers" not in _worker_pod()


def test_worker_mounts_what_its_settings_name(tmp_path):
    statefulset = _one("StatefulSet")
    pod = _worker_pod()
    (worker,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    config = worker["args"][worker["args"].index("--config") + 1]
    assert Path(config).parent == Path(mounts["config"])
    settings_text = _one("ConfigMap", "cdc-cache-worker")["data"]["worker.yaml"]
    settings = yaml.safe_load(settings_text)
    rules_path = Path(settings["rules"])
    assert rules_path.parent == Path(mounts["rules"])
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(_one("ConfigMap", "cdc-cache-rules")["data"][rules_path.name])
    assert load_rules(rules_file).tables
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert Path(mounts[claim["metadata"]["name"]]) in Path(settings["recovery_dir"]).parents
    for key in ("redis_password_file", "admin_token_file"):
        assert Path(settings[key]).parent == Path(mounts["secrets"])


def test_probes_use_the_admin_endpoints():
    (worker,) = _worker_pod()["containers"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (gateway,) = _one("Deployment", "cdc-cache-gateway")["spec"]["template"]["spec"]["containers"]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/healthz"
    for container in (worker, gateway):
        names = {p["name"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in names


def test_gateway_runs_the_contracted_command_and_settings():
    (gateway,) = _one("Deployment", "cdc-cache-gateway")["spec"]["template"]["spec"]["containers"]
    assert gateway["args"] == ["gateway"]
    names = {n.removeprefix("CDC_CACHE_GATEWAY_").lower() for n in _env(gateway)}
    assert names <= GATEWAY_SETTINGS
    assert _env(gateway)["CDC_CACHE_GATEWAY_HOST"]["value"] == "0.0.0.0"


def _pods() -> list[dict]:
    """The pod templates of every StatefulSet and Deployment."""
    return [
        d["spec"]["template"]["spec"] for _, d in DOCS if d["kind"] in ("StatefulSet", "Deployment")
    ]


def test_pods_run_unprivileged_with_a_read_only_root_and_bounded_memory():
    for pod in _pods():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, container["name"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]


def _secret_keys() -> dict[str, set[str]]:
    """Secret name -> keys, from every secretKeyRef and secret volume of the pods."""
    keys: dict[str, set[str]] = {}
    for pod in _pods():
        for container in pod["containers"] + pod.get("initContainers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    keys.setdefault(ref["name"], set()).add(ref["key"])
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                items = {i["key"] for i in volume["secret"]["items"]}
                keys.setdefault(volume["secret"]["secretName"], set()).update(items)
    return keys


def test_secrets_are_referenced_never_inlined():
    assert not [d for _, d in DOCS if d["kind"] == "Secret"]
    readme = (ROOT / "README.md").read_text()
    keys = _secret_keys()
    assert set(keys) == {"cdc-cache-worker", "cdc-cache-gateway", "cdc-cache-inspect"}
    for name, wanted in keys.items():
        command = re.search(
            rf"kubectl (?:-n \S+ )?create secret generic {name}((?:.*\\\n)*.*)", readme
        )
        assert command, f"README tells how to create the Secret {name}"
        assert set(re.findall(r"--from-(?:literal|file)=([\w-]+)=", command.group(1))) == wanted


def test_service_monitors_select_services_and_ports_that_exist():
    services = [d for _, d in DOCS if d["kind"] == "Service"]
    rules = (ROOT / "deploy" / "prometheus" / "rules.yml").read_text()
    jobs = set()
    for _, monitor in [(f, d) for f, d in DOCS if d["kind"] == "ServiceMonitor"]:
        wanted = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        if "jobLabel" not in monitor["spec"]:
            # Without jobLabel the job is the Service's name.
            jobs.add(service["metadata"]["name"])
    # The jobs the alerts select on are scraped under those names.
    assert {"cdc-cache", "cdc-cache-gateway"} <= set(re.findall(r'job="([^"]+)"', rules)) <= jobs


def test_watchdog_reads_the_workers_settings_and_secret_and_serves_its_port(tmp_path):
    deployment = _one("Deployment", "cdc-cache-watchdog")
    assert deployment["spec"]["replicas"] >= 2  # one acts, one stands by
    pod = deployment["spec"]["template"]["spec"]
    (watchdog,) = pod["containers"]
    assert watchdog["args"][:2] == ["watchdog", "--config"]
    config = Path(watchdog["args"][2])
    mounts = {m["name"]: m["mountPath"] for m in watchdog["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert config.parent == Path(mounts["config"])
    assert volumes["config"]["configMap"]["name"] == "cdc-cache-worker"
    assert config.name in _one("ConfigMap", "cdc-cache-worker")["data"]
    worker_settings = yaml.safe_load(_one("ConfigMap", "cdc-cache-worker")["data"][config.name])
    password = Path(worker_settings["redis_password_file"])
    assert password.parent == Path(mounts["secrets"])
    items = {i["key"]: i["path"] for i in volumes["secrets"]["secret"]["items"]}
    assert items == {"redis-password": password.name}, "only what the watchdog needs"
    secret = tmp_path / "secret"
    secret.write_text("x")
    settings_file = tmp_path / config.name
    settings_file.write_text(_one("ConfigMap", "cdc-cache-worker")["data"][config.name])
    env = {e["name"]: e["value"] for e in watchdog["env"]}
    settings = load(
        WatchdogSettings,
        settings_file,
        redis_password_file=secret,
        **{k.removeprefix("CDC_CACHE_").lower(): v for k, v in env.items()},
    )
    assert settings.redis_url == worker_settings["redis_url"]
    ports = {p["name"]: p["containerPort"] for p in watchdog["ports"]}
    assert ports == {"metrics": settings.watchdog_port}
    service = _one("Service", "cdc-cache-watchdog")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert watchdog["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert watchdog["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_inspector_reads_the_workers_settings_and_rules_and_serves_its_port(tmp_path):
    deployment = _one("Deployment", "cdc-cache-inspect")
    pod = deployment["spec"]["template"]["spec"]
    (inspect,) = pod["containers"]
    assert inspect["args"][:2] == ["inspect", "--config"]
    config = Path(inspect["args"][2])
    mounts = {m["name"]: Path(m["mountPath"]) for m in inspect["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert config.parent == mounts["config"]
    assert volumes["config"]["configMap"]["name"] == "cdc-cache-worker"
    assert volumes["rules"]["configMap"]["name"] == "cdc-cache-rules"
    text = _one("ConfigMap", "cdc-cache-worker")["data"][config.name]
    worker_settings = yaml.safe_load(text)
    assert Path(worker_settings["rules"]).parent == mounts["rules"]
    assert Path(worker_settings["redis_password_file"]).parent == mounts["secrets"]
    items = {i["key"] for i in volumes["secrets"]["secret"]["items"]}
    assert items == {"redis-password"}, "only what the inspector needs: not the admin token"
    env = {e["name"]: e["value"] for e in inspect["env"]}
    db_file = Path(env["CDC_CACHE_INSPECT_DB_FILE"])
    assert db_file.parent == mounts["database"]
    assert volumes["database"]["secret"]["items"] == [{"key": "db-url", "path": db_file.name}]
    settings_file = tmp_path / config.name
    settings_file.write_text(text)
    secret = tmp_path / "secret"
    secret.write_text("mysql://reader:x@db:3306/inventory")
    overrides = {k.removeprefix("CDC_CACHE_").lower(): v for k, v in env.items()}
    overrides |= {"redis_password_file": secret, "inspect_db_file": secret}
    settings = load(InspectSettings, settings_file, **overrides)
    assert settings.topic_pattern == worker_settings["topic_pattern"]
    assert settings.redis_url == worker_settings["redis_url"]
    ports = {p["name"]: p["containerPort"] for p in inspect["ports"]}
    assert ports == {"metrics": settings.inspect_port}
    service = _one("Service", "cdc-cache-inspect")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert inspect["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert inspect["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
