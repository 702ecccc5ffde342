"""``cdc-cache verify`` works in the Docker image: every library it imports is installed there.

No Docker engine runs here, so the image's Python packages are derived as its build does:
the ``Dockerfile``'s own requirements command is run against ``pyproject.toml``, and what
those requirements pull in is followed through the installed packages' metadata. The
database drivers also need what the slim base image lacks: libpq for psycopg (its
``binary`` extra ships one) and ``cryptography`` for PyMySQL (MySQL 8's default
``caching_sha2_password`` over a plain connection).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# The modules of `cdc-cache verify` and `verify --repair` (the database is read there).
TOOLS = ROOT / "cdc_cache" / "tools"
VERIFY_MODULES = [*sorted(TOOLS.glob("verify*.py")), TOOLS / "repair.py"]
# What a driver needs beyond itself on python:*-slim: a distribution, or a Debian package.
NATIVE_NEEDS = {
    "psycopg": ("psycopg-binary", "libpq5"),
    "pymysql": ("cryptography", ""),
}


def image_requirements(dockerfile: str, pyproject: str, workdir: Path) -> list[str]:
    """The requirements the Dockerfile's build installs, computed by its own command."""
    text = dockerfile.replace("\\\n", " ")
    run = next(line for line in text.splitlines() if "pip install -r /tmp/requirements.txt" in line)
    command = shlex.split(run.removeprefix("RUN ").split(">", 1)[0])
    assert command[:2] == ["python", "-c"], run
    (workdir / "pyproject.toml").write_text(pyproject)
    out = subprocess.run(
        [sys.executable, "-c", command[2]], cwd=workdir, capture_output=True, text=True, check=True
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def installed_closure(requirements: list[str]) -> set[str]:
    """Every distribution those requirements bring (markers as on Linux, this Python)."""
    seen: set[str] = set()
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        requirement, extra = todo.pop()
        environment = {**default_environment(), "extra": extra}
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for needed in importlib.metadata.requires(name) or []:
            parsed = Requirement(needed)
            todo += [(parsed, "")] + [(parsed, e) for e in requirement.extras]
    return {key.split("[")[0] for key in seen}


def imported_distributions(modules: list[Path]) -> dict[str, str]:
    """Third-party top-level modules these files import (also inside functions) → dist."""
    by_module = importlib.metadata.packages_distributions()
    found = {}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "cdc_cache" or top == "__future__":
                    continue
                found[top] = canonicalize_name(by_module[top][0])
    return found


def image_debian_packages(dockerfile: str) -> set[str]:
    final = dockerfile.rsplit("\nFROM ", 1)[-1].replace("\\\n", " ")
    return {
        word
        for match in re.finditer(r"apt-get install ([^&;\n]*)", final)
        for word in match.group(1).split()
        if not word.startswith("-")
    }


def missing_for_verify(dockerfile: str, pyproject: str, workdir: Path) -> list[str]:
    """What the image would lack for ``cdc-cache verify``, each with the module needing it."""
    closure = installed_closure(image_requirements(dockerfile, pyproject, workdir))
    debian = image_debian_packages(dockerfile)
    problems = []
    for module, dist in sorted(imported_distributions(VERIFY_MODULES).items()):
        distribution, package = NATIVE_NEEDS.get(module, (dist, ""))
        if dist not in closure:
            problems.append(f"{module}: the image does not install {dist}")
        elif distribution not in closure and package not in debian:
            instead = f" (or Debian's {package})" if package else ""
            problems.append(f"{module}: needs {distribution}{instead} in the image")
    return problems


def test_verify_finds_its_database_drivers_in_the_image(tmp_path):
    drivers = imported_distributions(VERIFY_MODULES)
    assert {"pymysql", "psycopg"} <= drivers.keys(), "the scan sees verify's lazy imports"
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert missing_for_verify(dockerfile, pyproject, tmp_path) == []


def test_a_driver_the_image_would_lack_is_named(tmp_path):
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()

    def lacking(*edits: tuple[str, str]) -> list[str]:
        changed = pyproject
        for old, new in edits:
            assert old in changed, old
            changed = changed.replace(old, new)
        return missing_for_verify(dockerfile, changed, tmp_path)

    assert lacking(('\n    "PyMySQL[rsa]>=1.1",', "")) == [
        "pymysql: the image does not install pymysql"
    ]
    assert lacking(('"psycopg[binary]>=3.1"', '"psycopg>=3.1"')) == [
        "psycopg: needs psycopg-binary (or Debian's libpq5) in the image"
    ]
    assert lacking(
        ('"PyMySQL[rsa]>=1.1"', '"PyMySQL>=1.1"'),
        ('"confluent-kafka[schemaregistry]==', '"confluent-kafka=='),
    ) == ["pymysql: needs cryptography in the image"]
    # libpq from Debian instead of the wheel also does
    with_libpq = dockerfile.replace(
        "FROM python:3.11.11-slim-bookworm\n",
        "FROM python:3.11.11-slim-bookworm\nRUN apt-get install -y libpq5\n",
    )
    unbundled = pyproject.replace('"psycopg[binary]>=3.1"', '"psycopg>=3.1"')
    assert with_libpq.count("libpq5") == 1
    assert missing_for_verify(with_libpq, unbundled, tmp_path) == []
