"""The connector files (``connectors/*.json``): read, checked, their placeholders filled.

``${env:VAR}`` placeholders are filled from this environment; ``${file:...}`` and other
config providers are left to Kafka Connect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cdc_cache.core.errors import ConfigError

_ENV_PLACEHOLDER = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class ConnectorFile:
    """One ``<name>.json``: the connector's name and its ``config`` map as written."""

    name: str
    path: Path
    config: Mapping[str, str]


def load_connectors(directory: Path, only: Sequence[str] = ()) -> list[ConnectorFile]:
    """Read every ``*.json`` in ``directory`` (or the ``only`` ones), checked up front.

    Values must be strings, as Connect stores them, or an unchanged file would always
    look changed; a ``name`` key must agree with the file name, as Connect requires.
    """
    paths = sorted(directory.glob("*.json"))
    if not paths:
        msg = f"no connector files (*.json) in {directory}; pass --dir"
        raise ConfigError(msg)
    by_name = {path.stem: path for path in paths}
    unknown = sorted(set(only) - by_name.keys())
    if unknown:
        msg = (
            f"--only {', '.join(unknown)}: no such file in {directory} "
            f"(connectors there: {', '.join(by_name)})"
        )
        raise ConfigError(msg)
    return [_load_one(by_name[name]) for name in (only or by_name)]


def _load_one(path: Path) -> ConnectorFile:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        msg = f"{path}:{exc.lineno}: not valid JSON: {exc.msg}"
        raise ConfigError(msg) from exc
    if not isinstance(config, dict):
        msg = f"{path}: expected a JSON object (the connector's config map)"
        raise ConfigError(msg)
    not_strings = sorted(key for key, value in config.items() if not isinstance(value, str))
    if not_strings:
        msg = f"{path}: write these values as JSON strings: {', '.join(not_strings)}"
        raise ConfigError(msg)
    name = path.stem
    if config.get("name", name) != name:
        msg = f"{path}: name {config['name']!r} differs from the file name; rename one"
        raise ConfigError(msg)
    return ConnectorFile(name, path, config)


def resolve_env(
    config: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Replace ``${env:VAR}`` with the variable's value where it is set here.

    Unset variables stay as written (Connect's own ``EnvVarConfigProvider`` may resolve
    them on the worker) and are returned so the caller can say so. Other providers'
    placeholders, such as ``${file:...}``, are Connect's to resolve and pass untouched.
    """
    unresolved: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        value = environ.get(match.group(1))
        if value is None:
            unresolved.add(match.group(1))
            return match.group(0)
        return value

    resolved = {key: _ENV_PLACEHOLDER.sub(substitute, value) for key, value in config.items()}
    return resolved, tuple(sorted(unresolved))


def changed_keys(current: Mapping[str, str], desired: Mapping[str, str]) -> tuple[str, ...]:
    """Keys added, removed or changed; ``name``, which Connect adds, does not count."""
    keys = (current.keys() | desired.keys()) - {"name"}
    return tuple(sorted(key for key in keys if current.get(key) != desired.get(key)))
