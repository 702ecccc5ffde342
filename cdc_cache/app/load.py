"""Settings of any kind from flags over ``CDC_CACHE_*`` environment over a YAML file.

A problem stops startup with where it came from (the file and line, the flag or the
variable) and what is wrong; a file that is not UTF-8 text or YAML nested too deep too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    YamlConfigSettingsSource,
)

from cdc_cache.app.settings import ENV_PREFIX, WorkerSettings
from cdc_cache.core.errors import ConfigError
from cdc_cache.plan.rules_loader import unreadable_yaml

_S = TypeVar("_S", bound=BaseSettings)


def load_settings(config_file: Path | None = None, **overrides: Any) -> WorkerSettings:
    """Build settings from flags (``overrides``), environment and an optional YAML file."""
    return load(WorkerSettings, config_file, **overrides)


def load(kind: type[_S], config_file: Path | None = None, **overrides: Any) -> _S:
    """Settings of ``kind`` from flags (``overrides``) over environment over a YAML file."""
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}

    class FromFile(kind):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config_file is not None:
                sources += (YamlConfigSettingsSource(settings_cls, yaml_file=config_file),)
            return sources

    if config_file is not None and not config_file.is_file():
        msg = f"settings file {config_file} does not exist; pass an existing file to --config"
        raise ConfigError(msg)
    try:
        settings: _S = FromFile(**given)
        return settings
    except ValidationError as exc:
        raise ConfigError(_explain(exc, config_file, given, kind)) from exc
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        msg = f"settings file {unreadable_yaml(str(config_file), exc)}"
        raise ConfigError(msg) from None


def _explain(
    exc: ValidationError, config_file: Path | None, given: dict[str, Any], kind: type[BaseSettings]
) -> str:
    prefix = kind.model_config.get("env_prefix", ENV_PREFIX)
    lines = _top_level_lines(config_file) if config_file is not None else {}
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        if field in given:
            origin = f"--{field.replace('_', '-')}"
        elif field in lines:
            origin = f"{config_file}:{lines[field]}"
        else:
            origin = f"{prefix}{field.upper()}" if field != "settings" else "settings"
        path = ".".join(str(part) for part in error["loc"]) or field
        problems.append(f"{origin}: {path}: {error['msg']}")
    what = kind.model_config.get("title") or "worker"
    if len(problems) == 1:
        return f"invalid {what} settings: {problems[0]}"
    return f"invalid {what} settings:\n  " + "\n  ".join(problems)


def _top_level_lines(config_file: Path) -> dict[str, int]:
    try:
        root = yaml.compose(config_file.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in root.value if isinstance(k, yaml.ScalarNode)}
