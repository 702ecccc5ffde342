"""The client distribution (``client/``): released with the worker, light, Python 3.9+, and
the only copy of the application side and of the key-name conventions."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import cdc_cache_client
from cdc_cache_client import cache_aside, keys

import cdc_cache
from cdc_cache.aside.cache_aside import CacheAside
from cdc_cache.core import keys as worker_keys

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client"


def project(path: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(path.read_text())["project"]
    return project


def test_the_client_is_released_with_the_worker_and_pinned_by_it() -> None:
    worker, client = project(ROOT / "pyproject.toml"), project(CLIENT / "pyproject.toml")
    assert client["version"] == worker["version"]
    assert f"cdc-cache-client=={worker['version']}" in worker["dependencies"]  # type: ignore[operator]
    assert cdc_cache_client.__version__ == cdc_cache.__version__ == worker["version"]


def test_the_client_needs_redis_alone_and_python_3_9() -> None:
    client = project(CLIENT / "pyproject.toml")
    assert client["requires-python"] == ">=3.9"
    assert [d.split(">")[0].split("=")[0] for d in client["dependencies"]] == ["redis"]  # type: ignore[attr-defined]
    stdlib = sys.stdlib_module_names
    for source in (CLIENT / "cdc_cache_client").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for name in names:
                    top = name.split(".")[0]
                    assert top in stdlib or top in {"redis", "cdc_cache_client", "__future__"}, (
                        f"{source.name} imports {name}"
                    )


def vermin(path: Path) -> subprocess.CompletedProcess[str]:
    """What vermin says of ``path`` against a Python 3.9 floor (exit 1: something newer)."""
    argv = ["-t=3.9-", "--violations", "--eval-annotations", "--no-tips", str(path)]
    command = [str(Path(sys.executable).parent / "vermin"), *argv]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_vermin_finds_nothing_newer_than_python_3_9_in_the_client() -> None:
    found = vermin(CLIENT / "cdc_cache_client")
    assert found.returncode == 0, found.stdout + found.stderr


def test_vermin_would_find_a_python_3_10_construct(tmp_path: Path) -> None:
    (tmp_path / "newer.py").write_text("def f(a, b):\n    return list(zip(a, b, strict=True))\n")
    found = vermin(tmp_path)
    assert found.returncode == 1 and "zip(strict)" in found.stdout


def test_the_worker_uses_the_clients_code_rather_than_a_copy() -> None:
    assert issubclass(CacheAside, cdc_cache_client.CacheAside)
    assert set(vars(CacheAside)) - {"__module__", "__doc__", "__qualname__"} == {"get_row"}
    assert worker_keys.Names is keys.Names and worker_keys.escape_value is keys.escape_value
    assert cdc_cache_client.CacheAside is cache_aside.CacheAside
