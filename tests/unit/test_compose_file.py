"""docker-compose.yml is a valid Compose file whose pieces fit together, checked offline.

Two independent checks: the current compose-spec JSON schema (vendored by check-jsonschema)
and Compose's own `docker-compose config` (the Debian package; it needs no Docker engine)
which also resolves variables, references between services, secrets and volumes. Then the
wiring the stack relies on: start order, settings names, mounts, Prometheus and Grafana.
"""

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from cdc_cache.app.settings import ENV_PREFIX, WatchdogSettings, WorkerSettings
from cdc_cache.inspector.settings import InspectSettings
from cdc_cache.notify.settings import GatewaySettings

ROOT = Path(__file__).parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_FILES = [ROOT / ".env", *(ROOT / "deploy" / "compose" / f for f in ("avro.env", "routed.env"))]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GATEWAY_SETTINGS = set(GatewaySettings.model_fields)
GATEWAY_PREFIX = GatewaySettings.model_config["env_prefix"]


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} not found: {hint}")
    return found


@pytest.fixture(scope="module")
def docker_compose() -> str:
    return _tool("docker-compose", "scripts/bootstrap installs Debian's docker-compose package")


@pytest.fixture(scope="module")
def check_jsonschema() -> str:
    return _tool("check-jsonschema", "it is a dev dependency: bash scripts/bootstrap")


def _config(docker_compose: str, compose_file: Path, env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [docker_compose, "--env-file", str(env_file), "-f", str(compose_file), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module", params=ENV_FILES, ids=lambda p: p.name)
def resolved(request, docker_compose) -> tuple[Path, dict]:
    """The stack as Compose resolves it with one env file (variables filled in)."""
    done = _config(docker_compose, COMPOSE_FILE, request.param)
    assert done.returncode == 0, done.stderr
    return request.param, yaml.safe_load(done.stdout)


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_compose_file_matches_the_compose_spec(check_jsonschema, tmp_path):
    ok = subprocess.run(
        [check_jsonschema, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["worker"]["healthcheck"]["retry"] = 3  # misspelt key
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(broken))
    bad = subprocess.run(
        [
            check_jsonschema,
            "--builtin-schema",
            "vendor.compose-spec",
            str(tmp_path / "compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "retry" in bad.stdout + bad.stderr


def test_docker_compose_config_refuses_a_dangling_reference(docker_compose, tmp_path):
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["worker"]["depends_on"]["rediss"] = {"condition": "service_healthy"}
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    done = _config(docker_compose, tmp_path / "docker-compose.yml", ENV_FILES[0])
    assert done.returncode != 0 and "rediss" in done.stderr


def test_each_variant_registers_its_connector_and_decodes_its_format(resolved):
    env_file, stack = resolved
    env = _env_file(env_file)
    services = stack["services"]
    command = services["register-connector"]["command"]
    connector = command[command.index("--only") + 1]
    assert connector == env["CONNECTOR"]
    config = yaml.safe_load((ROOT / "connectors" / f"{connector}.json").read_text())
    worker_env = services["worker"]["environment"]
    assert re.fullmatch(
        worker_env["CDC_CACHE_TOPIC_PATTERN"], f"{config['topic.prefix']}.inventory.stock"
    )
    avro = "AvroConverter" in config["value.converter"]
    assert worker_env["CDC_CACHE_MESSAGE_FORMAT"] == ("avro" if avro else "json")
    init = services["kafka-init"]["command"][0]
    assert f"__debezium-heartbeat.{config['topic.prefix']}:1" in init, "heartbeat topic up front"


def test_start_order_waits_on_health_and_one_shots(resolved):
    _, stack = resolved
    services = stack["services"]
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            condition = how["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits on {dependency}'s health"
                )
            else:
                assert condition == "service_completed_successfully", f"{name} -> {dependency}"
                assert services[dependency].get("restart") == "no", f"{dependency} is one-shot"
    long_running = {n for n, s in services.items() if s.get("restart") != "no"}
    assert long_running - {n for n, s in services.items() if "healthcheck" in s} == set()


def test_images_are_pinned_to_exact_versions():
    for name, service in yaml.safe_load(COMPOSE_FILE.read_text())["services"].items():
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file(), name
            continue
        _, _, tag = service["image"].rpartition(":")
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: pin {service['image']} to a release"


def test_worker_and_gateway_environment_names_real_settings():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for variable in services["worker"]["environment"]:
        assert variable.removeprefix(ENV_PREFIX).lower() in WorkerSettings.model_fields, variable
    for variable in services["gateway"]["environment"]:
        assert variable.startswith(GATEWAY_PREFIX), variable
        assert variable.removeprefix(GATEWAY_PREFIX).lower() in GATEWAY_SETTINGS, variable
    assert services["gateway"]["command"] == ["gateway"]
    assert services["worker"]["command"][0] == "run"
    for variable in services["watchdog"]["environment"]:
        assert variable.removeprefix(ENV_PREFIX).lower() in WatchdogSettings.model_fields, variable
    assert services["watchdog"]["command"] == ["watchdog"]
    same = "CDC_CACHE_REDIS_URL"
    assert services["watchdog"]["environment"][same] == services["worker"]["environment"][same]


def test_bind_mounts_and_secret_files_exist(resolved):
    _, stack = resolved
    for name, service in stack["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts missing {source}"
    for name, secret in stack["secrets"].items():
        assert Path(secret["file"]).is_file(), name


def test_mysql_password_for_connect_matches_the_database_user():
    secrets = ROOT / "deploy" / "compose" / "secrets"
    properties = dict(
        line.split("=", 1) for line in (secrets / "mysql.properties").read_text().splitlines()
    )
    assert properties["password"] == (secrets / "mysql-cdc-password").read_text()
    for config in (ROOT / "connectors").glob("inventory-mysql*.json"):
        assert "${file:/opt/kafka/secrets/mysql.properties:password}" in config.read_text()


def test_kafka_cluster_id_is_a_kraft_uuid():
    kafka = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["kafka"]["environment"]
    cluster_id = kafka["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft, no ZooKeeper"


def test_mysql_writes_the_binlog_debezium_needs():
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["mysql"]["command"]
    for flag in ["--binlog-format=ROW", "--binlog-row-image=FULL", "--gtid-mode=ON"]:
        assert flag in command.split()


def test_prometheus_config_is_valid_and_scrapes_the_job_the_alerts_expect():
    promtool = _tool("promtool", "install Debian's prometheus package (scripts/bootstrap does)")
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    rules = (PROMETHEUS_DIR / "rules.yml").read_text()
    assert set(re.findall(r'job="([^"]+)"', rules)) <= set(jobs)
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    port = services["worker"]["environment"]["CDC_CACHE_METRICS_PORT"]
    assert jobs["cdc-cache"]["static_configs"][0]["targets"] == [f"worker:{port}"]
    port = services["watchdog"]["environment"]["CDC_CACHE_WATCHDOG_PORT"]
    assert jobs["cdc-cache-watchdog"]["static_configs"][0]["targets"] == [f"watchdog:{port}"]
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith("./")}
    assert {f"/etc/prometheus/{f}" for f in config["rule_files"]} <= mounts


def test_grafana_provisions_the_dashboard_and_a_prometheus_datasource():
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    grafana = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "cdc-cache.yml").read_text())[
        "providers"
    ]
    dashboard_target = mounts["./deploy/grafana/cdc-cache.json"]
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    dashboard = yaml.safe_load((ROOT / "deploy" / "grafana" / "cdc-cache.json").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["query"] == source["type"] == "prometheus"


def test_dockerfile_runs_unprivileged_and_caches_dependencies():
    lines = [
        line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()
    ]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    for i in stages:
        assert re.fullmatch(r"FROM python:\d+\.\d+\.\d+-slim-\w+( AS \w+)?", lines[i]), lines[i]
    build, final = lines[stages[0] : stages[1]], lines[stages[1] :]
    first_source = next(i for i, line in enumerate(build) if line.startswith("COPY cdc_cache"))
    deps = next(i for i, line in enumerate(build) if "pip install -r" in line)
    assert deps < first_source, "dependencies are installed before the source is copied"
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and user[-1].isdigit() and int(user[-1]) > 0
    assert 'ENTRYPOINT ["cdc-cache"]' in final
    assert any(line.startswith('CMD ["run"') for line in final)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert next(line for line in ignore if not line.startswith("#")) == "*"
    copied = {line.split()[1] for line in build if line.startswith("COPY ")}
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= allowed, "the build context holds what the image copies"


def test_the_inspector_reads_what_the_worker_reads_with_a_read_only_user_and_is_scraped():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    inspect, worker = services["inspect"]["environment"], services["worker"]["environment"]
    for variable in inspect:
        assert variable.removeprefix(ENV_PREFIX).lower() in InspectSettings.model_fields, variable
    shared = set(inspect) & set(worker)
    assert {"CDC_CACHE_RULES", "CDC_CACHE_TOPIC_PATTERN", "CDC_CACHE_REDIS_URL"} <= shared
    assert all(inspect[name] == worker[name] for name in shared)
    assert services["inspect"]["command"] == ["inspect"]
    assert services["inspect"]["volumes"][0] == services["worker"]["volumes"][0], "same rules"
    # its database URL names the read-only user the schema script creates, with its password
    url = urlsplit((ROOT / "deploy" / "compose" / "secrets" / "inspect-db-url").read_text())
    schema = (ROOT / "deploy" / "mysql" / "inventory.sql").read_text()
    assert f"CREATE USER IF NOT EXISTS '{url.username}'@'%' IDENTIFIED BY '{url.password}'" in schema
    assert f"GRANT SELECT ON inventory.* TO '{url.username}'@'%';" in schema
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = inspect["CDC_CACHE_INSPECT_PORT"]
    assert jobs["cdc-cache-inspect"]["static_configs"][0]["targets"] == [f"inspect:{port}"]
