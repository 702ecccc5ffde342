import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdc_cache.app.load import load, load_settings
from cdc_cache.app.settings import SharedSettings, WatchdogSettings
from cdc_cache.cli import main
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.retry import Backoff
from cdc_cache.inspector.settings import InspectSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CDC_CACHE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(text)
    return path


def test_flags_override_environment_which_overrides_the_file(tmp_path, monkeypatch):
    config = write(
        tmp_path,
        "rules: r.yaml\ntopics: [a]\nworkers: 3\nbatch_size: 10\nkafka: {security.protocol: SSL}\n",
    )
    monkeypatch.setenv("CDC_CACHE_WORKERS", "4")
    monkeypatch.setenv("CDC_CACHE_BATCH_SIZE", "20")
    settings = load_settings(config, batch_size=30)
    assert (settings.workers, settings.batch_size) == (4, 30)
    assert settings.kafka == {"security.protocol": "SSL"}
    assert settings.topics == ["a"]


def test_bad_value_in_the_file_names_file_and_line(tmp_path):
    config = write(tmp_path, "rules: r.yaml\ntopics: [a]\n\nworkers: many\n")
    with pytest.raises(
        ConfigError, match=r"worker\.yaml:4: workers: Input should be a valid integer"
    ):
        load_settings(config)


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("CDC_CACHE_EPOCH_INTERVAL_MS", "1")
    with pytest.raises(ConfigError, match="CDC_CACHE_EPOCH_INTERVAL_MS: epoch_interval_ms"):
        load_settings(rules=Path("r.yaml"), topics=("a",))


def test_unknown_setting_is_refused(tmp_path):
    config = write(tmp_path, "rules: r.yaml\ntopics: [a]\nredis_ur1: redis://x\n")
    with pytest.raises(
        ConfigError, match=r"worker\.yaml:3: redis_ur1: Extra inputs are not permitted"
    ):
        load_settings(config)


def test_topics_are_required():
    with pytest.raises(ConfigError, match="give the Debezium topics to read"):
        load_settings(rules=Path("r.yaml"))


def test_invalid_topic_pattern_is_refused():
    with pytest.raises(ConfigError, match=r"--topic-pattern: topic_pattern: .*not a valid regular"):
        load_settings(rules=Path("r.yaml"), topic_pattern="(")


def test_missing_settings_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"settings file .*nope\.yaml does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_run_with_a_bad_rules_file_exits_2_before_touching_kafka(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("tables:\n  inventory.stock:\n    keys:\n      - key: '{id}'\n")
    result = CliRunner().invoke(
        main, ["run", "--rules", str(rules), "--topic", "t", "--brokers", "127.0.0.1:1"]
    )
    assert result.exit_code == 2
    assert "rules.yaml:4: tables.inventory.stock.keys[0].key" in result.output


@pytest.mark.parametrize("command", [["mode", "get"], ["mode", "set", "ttl"]])
def test_mode_commands_name_an_unreachable_redis_and_exit_2(command):
    url = "redis://127.0.0.1:1/0"
    result = CliRunner().invoke(main, [*command, "--redis-url", url])
    assert result.exit_code == 2
    assert f"Redis at {url}" in result.output and "check --redis-url" in result.output


def test_avro_needs_a_schema_registry_url():
    with pytest.raises(ConfigError, match="message_format avro needs schema_registry_url"):
        load_settings(rules=Path("r.yaml"), topics=("a",), message_format="avro")
    settings = load_settings(
        rules=Path("r.yaml"),
        topics=("a",),
        message_format="avro",
        schema_registry_url="http://registry:8081",
    )
    assert settings.message_format == "avro"


def test_unknown_message_format_names_the_setting(monkeypatch):
    monkeypatch.setenv("CDC_CACHE_MESSAGE_FORMAT", "protobuf")
    with pytest.raises(ConfigError, match="CDC_CACHE_MESSAGE_FORMAT: message_format"):
        load_settings(rules=Path("r.yaml"), topics=("a",))


def test_secrets_come_from_files_and_never_show(tmp_path, monkeypatch):
    (tmp_path / "redis").write_text("redis-hush-1\n")
    (tmp_path / "admin").write_text("admin-hush-2")
    monkeypatch.setenv("CDC_CACHE_REDIS_PASSWORD_FILE", str(tmp_path / "redis"))
    monkeypatch.setenv("CDC_CACHE_ADMIN_TOKEN_FILE", str(tmp_path / "admin"))
    settings = load_settings(rules=Path("r.yaml"), topics=("a",), redis_username="cdc")
    assert settings.redis_password is not None and settings.admin_token is not None
    assert settings.redis_password.get_secret_value() == "redis-hush-1"
    assert settings.admin_token.get_secret_value() == "admin-hush-2"
    assert "hush" not in repr(settings) and "hush" not in str(settings.model_dump())


def test_a_secret_and_its_file_together_are_refused(tmp_path):
    (tmp_path / "p").write_text("x")
    with pytest.raises(ConfigError, match="give redis_password or redis_password_file, not both"):
        load_settings(
            rules=Path("r.yaml"),
            topics=("a",),
            redis_password="y",
            redis_password_file=tmp_path / "p",
        )


def test_a_missing_secret_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"admin_token_file .*nope cannot be read"):
        load_settings(rules=Path("r.yaml"), topics=("a",), admin_token_file=tmp_path / "nope")


def test_a_bad_value_for_a_secret_is_reported_without_it(tmp_path):
    config = write(tmp_path, "rules: r.yaml\ntopics: [a]\nredis_password: [Secret-3]\n")
    with pytest.raises(ConfigError, match=r"worker\.yaml:3: redis_password") as err:
        load_settings(config)
    assert "Secret-3" not in str(err.value)


def test_retry_policies_per_server_kind_from_file_and_environment(tmp_path, monkeypatch):
    config = write(
        tmp_path, "rules: r.yaml\ntopics: [a]\nretry_redis: {initial_s: 0.05, max_s: 2}\n"
    )
    monkeypatch.setenv("CDC_CACHE_RETRY_KAFKA", '{"initial_s": 1, "max_s": 60, "jitter": 0}')
    settings = load_settings(config)
    assert settings.retry_redis.backoff() == Backoff(0.05, 2.0, 2.0, 0.5)
    assert settings.retry_kafka.backoff() == Backoff(1.0, 60.0, 2.0, 0.0)


def test_bad_retry_policy_names_file_line_and_field(tmp_path):
    config = write(
        tmp_path, "rules: r.yaml\ntopics: [a]\nretry_redis:\n  initial_s: 5\n  max_s: 1\n"
    )
    with pytest.raises(
        ConfigError, match=r"worker\.yaml:3: retry_redis: .*initial_s \(5\) must not exceed max_s"
    ):
        load_settings(config)
    config = write(tmp_path, "rules: r.yaml\ntopics: [a]\nretry_kafka: {jitter: 2}\n")
    with pytest.raises(
        ConfigError, match=r"worker\.yaml:3: retry_kafka\.jitter: .*less than or equal to 1"
    ):
        load_settings(config)


def test_dlq_commands_accept_the_worker_settings_file(tmp_path):
    config = write(tmp_path, "rules: r.yaml\ntopics: [a]\nworkers: 3\ndlq_topic: dead\n")
    settings = load(SharedSettings, config)
    assert (settings.dlq_topic, settings.max_value_bytes) == ("dead", 1_048_576)


def test_run_takes_the_dlq_settings_as_flags(tmp_path):
    result = CliRunner().invoke(
        main,
        ["run", "--rules", str(tmp_path / "none.yaml"), "--topic", "a", "--dlq-topic", "",
         "--max-value-bytes", "0"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--dlq-topic: dlq_topic: String should have at least 1 character" in result.output
    assert "--max-value-bytes: max_value_bytes: Input should be greater than or equal to 1" in (
        result.output
    )


# --- cdc-cache gateway ---


def test_gateway_settings_flags_over_environment_over_file(tmp_path, monkeypatch):
    from cdc_cache.app.load import load
    from cdc_cache.notify.settings import GatewaySettings

    config = write(tmp_path, "port: 9000\nhost: 0.0.0.0\nsecret: from-file\nqueue_size: 5\n")
    monkeypatch.setenv("CDC_CACHE_GATEWAY_PORT", "9100")
    monkeypatch.setenv("CDC_CACHE_GATEWAY_SECRET", "from-env")
    settings = load(GatewaySettings, config, port=9200)
    assert (settings.port, settings.host, settings.queue_size) == (9200, "0.0.0.0", 5)
    assert settings.signing_key() == b"from-env"
    assert settings.redis_url == "redis://127.0.0.1:16379/0"


def test_gateway_needs_a_readable_non_empty_secret(tmp_path):
    from cdc_cache.app.load import load
    from cdc_cache.notify.settings import GatewaySettings

    with pytest.raises(ConfigError, match="give the token signing key"):
        load(GatewaySettings)
    with pytest.raises(ConfigError, match="cannot read secret_file"):
        load(GatewaySettings, secret_file=tmp_path / "missing").signing_key()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load(GatewaySettings, secret_file=tmp_path / "empty").signing_key()
    config = write(tmp_path, "port: nope\nsecret: x\n")
    with pytest.raises(ConfigError, match=r"invalid gateway settings: .*worker.yaml:1: port"):
        load(GatewaySettings, config)


def test_gateway_token_command_prints_a_token_the_gateway_accepts(tmp_path, monkeypatch):
    import time

    from cdc_cache.notify.tokens import verify

    (tmp_path / "key").write_text("k3y\n")
    args = ["gateway", "token", "--channel", "inventory:*", "--channel", "orders:eu"]
    result = CliRunner().invoke(
        main, [*args, "--ttl-s", "60", "--secret-file", str(tmp_path / "key")]
    )
    assert result.exit_code == 0, result.output
    grant = verify(b"k3y", result.output.strip(), time.time())
    assert grant.patterns == ("inventory:*", "orders:eu")
    assert 50 < grant.expires_at - time.time() <= 60

    refused = CliRunner().invoke(main, [*args[:2], "--channel", "a b", "--secret", "k"])
    assert refused.exit_code == 2 and "whitespace" in refused.output
    missing = CliRunner().invoke(main, args)
    assert missing.exit_code == 2 and "give the token signing key" in missing.output


def test_eviction_fallback_refuses_by_default_and_names_its_choices(tmp_path, monkeypatch):
    assert load_settings(rules=Path("r.yaml"), topics=("a",)).eviction_fallback == "refuse"
    monkeypatch.setenv("CDC_CACHE_EVICTION_FALLBACK", "invalidate_only")
    assert load_settings(rules=Path("r.yaml"), topics=("a",)).eviction_fallback == "invalidate_only"
    config = write(tmp_path, "rules: r.yaml\ntopics: [a]\neviction_fallback: ignore\n")
    monkeypatch.delenv("CDC_CACHE_EVICTION_FALLBACK")
    with pytest.raises(ConfigError, match=r"worker\.yaml:3: eviction_fallback: .*'refuse'"):
        load_settings(config)


def test_replica_waiting_is_off_by_default_and_its_bounds_are_checked(tmp_path, monkeypatch):
    settings = load_settings(rules=Path("r.yaml"), topics=("a",))
    assert (settings.redis_replicas, settings.redis_replicas_timeout_ms) == (0, 1000)
    config = write(tmp_path, "rules: r.yaml\ntopics: [a]\nredis_replicas: -1\n")
    with pytest.raises(ConfigError, match=r"worker\.yaml:3: redis_replicas: .*greater than"):
        load_settings(config)
    monkeypatch.setenv("CDC_CACHE_REDIS_REPLICAS_TIMEOUT_MS", "0")
    with pytest.raises(ConfigError, match="CDC_CACHE_REDIS_REPLICAS_TIMEOUT_MS"):
        load_settings(rules=Path("r.yaml"), topics=("a",))


def test_watchdog_reads_the_worker_settings_file_for_redis_and_its_own_settings(
    tmp_path, monkeypatch
):
    secret = tmp_path / "redis-password"
    secret.write_text("pw\n")
    config = write(
        tmp_path,
        "rules: r.yaml\ntopics: [a]\nredis_url: redis://cache:6379/0?cluster=true\n"
        f"redis_password_file: {secret}\nadmin_token_file: /nowhere\nworkers: 2\n",
    )
    monkeypatch.setenv("CDC_CACHE_WATCHDOG_DOWN_AFTER_S", "45")
    settings = load(WatchdogSettings, config, watchdog_port=9109)
    assert settings.redis_url == "redis://cache:6379/0?cluster=true"
    assert settings.redis_auth().kwargs() == {"password": "pw"}
    assert (settings.watchdog_down_after_s, settings.watchdog_port) == (45, 9109)


def test_watchdog_with_a_bad_setting_exits_2_naming_it(tmp_path):
    result = CliRunner().invoke(main, ["watchdog", "--redis-url", "redis://x:1/0?cluster=maybe"])
    assert result.exit_code == 2
    assert "cluster= must be true or false" in result.output
    bad_port = CliRunner(env={"CDC_CACHE_WATCHDOG_PORT": "99999"}).invoke(main, ["watchdog"])
    assert bad_port.exit_code == 2
    assert "CDC_CACHE_WATCHDOG_PORT: watchdog_port" in bad_port.output
    assert "invalid watchdog settings" in bad_port.output


def test_inspect_reads_the_worker_file_of_a_cluster_and_takes_its_own_settings(
    tmp_path, monkeypatch
):
    config = write(
        tmp_path,
        "rules: r.yaml\ntopic_pattern: 'db\\.inv\\..*'\nredis_url: redis://cache:6379/0\n"
        "addresses: [w0:2101, w1:2101]\nworkers: 2\nmetrics_port: 9108\n",
    )
    monkeypatch.setenv("CDC_CACHE_INSPECT_SETTLE_S", "5")
    dsn = tmp_path / "dsn"
    dsn.write_text("mysql://reader:pw@db:3306/inventory\n")
    settings = load(InspectSettings, config, inspect_db_file=dsn, inspect_sample_every=10)
    assert settings.topic_pattern == r"db\.inv\..*" and settings.redis_url.endswith("/0")
    assert (settings.inspect_settle_s, settings.inspect_sample_every) == (5.0, 10)
    assert settings.dsn() == "mysql://reader:pw@db:3306/inventory"
    assert "pw" not in repr(settings)


def test_inspect_needs_a_database_and_sane_limits(tmp_path):
    config = write(tmp_path, "rules: r.yaml\ntopics: [a]\n")
    with pytest.raises(ConfigError, match="inspect_db"):
        load(InspectSettings, config)
    with pytest.raises(ConfigError, match="inspect_max_db_queries_per_s"):
        load(InspectSettings, config, inspect_db="mysql://x", inspect_max_db_queries_per_s=0)
    with pytest.raises(ConfigError, match="topics"):
        load(InspectSettings, write(tmp_path, "rules: r.yaml\n"), inspect_db="mysql://x")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "give the database to compare with"),
        (["--db", "sqlite:///inventory.db"], "inspect_db has the scheme 'sqlite'"),
        (["--db", "mysql://x", "--settle-s", "0"], "inspect_settle_s"),
    ],
)
def test_inspect_stops_with_exit_2_and_the_setting_to_fix(tmp_path, args, said):
    command = ["inspect", "--rules", str(tmp_path / "r.yaml"), "--topic", "t", *args]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output


def test_cluster_addresses_derive_from_a_template_and_the_process_count(tmp_path, monkeypatch):
    config = write(
        tmp_path,
        "rules: r.yaml\ntopics: [a]\naddress_template: 'w-{process}.svc:2101'\n",
    )
    monkeypatch.setenv("CDC_CACHE_PROCESSES", "3")
    settings = load_settings(config, process_id=2)
    assert settings.addresses == ["w-0.svc:2101", "w-1.svc:2101", "w-2.svc:2101"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("address_template: 'w-{process}:1'\n", "address_template and processes go together"),
        ("processes: 2\n", "address_template and processes go together"),
        ("address_template: 'w:1'\nprocesses: 2\n", "must hold {process}"),
        ("address_template: 'w-{process}-{zone}:1'\nprocesses: 2\n", "only {process}"),
        ("address_template: 'w-{process}:1'\nprocesses: 2\naddresses: [a:1]\n", "not both"),
        ("address_template: 'w-{process}:1'\nprocesses: 0\n", "processes: Input should be"),
    ],
)
def test_a_bad_cluster_template_stops_with_the_setting_to_fix(tmp_path, text, said):
    config = write(tmp_path, f"rules: r.yaml\ntopics: [a]\nprocess_id: 0\n{text}")
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_settings(config)


def test_a_process_beyond_the_cluster_is_refused(tmp_path):
    # e.g. a StatefulSet scaled to 4 while its pods were told of 3 processes
    config = write(
        tmp_path,
        "rules: r.yaml\ntopics: [a]\naddress_template: 'w-{process}:1'\nprocesses: 3\n",
    )
    assert len(load_settings(config, process_id=2).addresses) == 3
    with pytest.raises(ConfigError, match="process_id 3 is outside the cluster of 3"):
        load_settings(config, process_id=3)


def test_namespace_defaults_to_todays_names_and_is_read_from_the_environment(monkeypatch):
    assert load_settings(rules=Path("r.yaml"), topics=("a",)).namespace == "cdc"
    monkeypatch.setenv("CDC_CACHE_NAMESPACE", "orders-eu")
    assert load_settings(rules=Path("r.yaml"), topics=("a",)).namespace == "orders-eu"
    assert load(WatchdogSettings).namespace == "orders-eu"


def test_a_namespace_with_key_syntax_stops_startup(monkeypatch):
    monkeypatch.setenv("CDC_CACHE_NAMESPACE", "orders:eu")
    with pytest.raises(ConfigError, match=r"CDC_CACHE_NAMESPACE: namespace: .* must be 1 to 32 letters"):
        load_settings(rules=Path("r.yaml"), topics=("a",))
    result = CliRunner().invoke(main, ["mode", "get"])
    assert result.exit_code == 2 and "namespace 'orders:eu'" in result.output
