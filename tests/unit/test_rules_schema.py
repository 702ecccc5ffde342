"""The rules file's JSON Schema: generated from the loader, committed, and checked."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.plan import rules_schema
from cdc_cache.plan.rules_loader import KEY_SETTINGS, TABLE_SETTINGS
from cdc_cache.plan.rules_schema import schema
from tests.unit.test_rules_expressions import RULES_YAML

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "docs" / "rules.schema.json"
EXAMPLE = ROOT / "cdc_cache" / "examples" / "inventory.rules.yaml"


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def test_the_committed_schema_is_the_generated_one() -> None:
    """Regenerate with: cdc-cache rules schema > docs/rules.schema.json"""
    assert json.loads(COMMITTED.read_text()) == schema()


def test_the_schema_is_valid_json_schema_and_takes_the_loaders_settings() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    table = schema()["properties"]["tables"]["additionalProperties"]
    assert set(table["properties"]) == TABLE_SETTINGS
    assert set(table["properties"]["keys"]["items"]["properties"]) == KEY_SETTINGS


def test_a_loader_setting_the_schema_does_not_describe_refuses_to_generate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rules_schema, "KEY_SETTINGS", KEY_SETTINGS | {"rank"})
    with pytest.raises(AssertionError, match="missing \\['rank'\\]"):
        schema()


@pytest.mark.parametrize("text", [EXAMPLE.read_text(), RULES_YAML])
def test_rules_files_the_loader_takes_validate(text: str) -> None:
    assert list(validator().iter_errors(yaml.safe_load(text))) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"tables": {"a.b": {"keys": [{"key": "k:{id}", "action": "upsert"}]}}},
        {"tables": {"a.b": {"keys": [{"key": "k:{id}", "ttl": {"minutes": "x"}}]}}},
        {"tables": {"a.b": {"keys": [{"key": "k:{id}", "fields": [{"name": "t"}]}]}}},
        {"tables": {"a.b": {"snapshot": "sometimes"}}},
        {"tables": {"nodot": {}}},
        {"tables": {"a.b": {"wach": ["x"]}}},
    ],
)
def test_typos_and_bad_choices_fail_the_schema(bad: dict[str, object]) -> None:
    assert list(validator().iter_errors(bad))


def test_rules_schema_command_prints_the_committed_schema() -> None:
    result = CliRunner().invoke(main, ["rules", "schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == json.loads(COMMITTED.read_text())


def test_rules_check_exits_0_for_a_good_file_and_1_with_every_problem(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["rules", "check", str(EXAMPLE)])
    assert ok.exit_code == 0, ok.output
    assert "ok (3 tables)" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text('tables:\n  a.b:\n    keys:\n      - key: "k:{id}"\n        when: "x ==="\n')
    result = runner.invoke(main, ["rules", "check", str(bad), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    (problem,) = report["problems"]
    assert problem["file"] == str(bad) and problem["line"] == 5
    assert "not a valid expression" in problem["message"]


def test_rules_check_exits_2_when_it_cannot_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["rules", "check", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2
    unsupported = CliRunner().invoke(main, ["rules", "check", str(EXAMPLE), "--db", "oracle://x"])
    assert unsupported.exit_code == 2
