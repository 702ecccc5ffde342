"""The package's layout: every module in a subpackage, imports pointing one way.

Each subpackage's docstring ends with ``May import: a, b, c.``; a module may import its
own package and those, nothing else. The rules say which way the path of one change runs
(core at the bottom, the command line at the top), and no rule may allow a loop.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cdc_cache"
ENGINE = ROOT / "dataflows"
RULE = re.compile(r"^May import: (.+?)\.$", re.M | re.S)


def packages() -> dict[str, Path]:
    found = {p.name: p for p in sorted(PACKAGE.iterdir()) if (p / "__init__.py").is_file()}
    return {**found, "dataflows": ENGINE}


def allowed(package: Path) -> set[str]:
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
    match = RULE.search(doc or "")
    assert match, f"{package.relative_to(ROOT)}/__init__.py: no 'May import: ...' line"
    text = match.group(1)
    if text == "nothing else of the package":
        return set()
    return {name.strip() for name in text.replace("\n", " ").split(",")}


def imported(module: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import, function-local and TYPE_CHECKING ones too."""
    found = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def package_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] == "dataflows":
        return "dataflows"
    if parts[0] == "cdc_cache" and len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return None


def modules(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py"))


@pytest.mark.parametrize("name", sorted(packages()))
def test_a_package_imports_only_what_its_docstring_allows(name: str) -> None:
    package = packages()[name]
    may = allowed(package)
    offending = []
    for module in modules(package):
        for line, dotted in imported(module):
            other = package_of(dotted)
            if other is not None and other != name and other not in may:
                offending.append(f"{module.relative_to(ROOT)}:{line} imports {dotted}")
    assert not offending, f"{name} may import {sorted(may) or 'nothing'}, but:\n" + "\n".join(
        sorted(set(offending))
    )


def test_the_rules_name_packages_that_exist_and_allow_no_loop() -> None:
    rules = {name: allowed(path) for name, path in packages().items()}
    unknown = {f"{name}: {other}" for name, may in rules.items() for other in may - set(rules)}
    assert not unknown, f"rules naming no package: {sorted(unknown)}"
    done: list[str] = []
    waiting = dict(rules)
    while waiting:  # peel off the packages whose allowed imports are all placed already
        ready = sorted(name for name, may in waiting.items() if may <= set(done))
        assert ready, f"the rules allow a loop among {sorted(waiting)}"
        done += ready
        for name in ready:
            del waiting[name]


def test_no_module_is_left_flat_in_the_package() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"]


def test_the_stream_engine_is_imported_in_dataflows_only() -> None:
    engine = [
        f"{module.relative_to(ROOT)}:{line} imports {dotted}"
        for module in modules(PACKAGE)
        for line, dotted in imported(module)
        if dotted.split(".")[0] == "bytewax"
    ]
    assert not engine, "\n".join(engine)


def test_asset_paths_name_the_folder_of_their_package() -> None:
    # An asset path built at run time (an f-string) escapes the move's rewriting: Lua
    # scripts and web assets live in their package's folder, none at the package root.
    left = [
        f"{module.relative_to(ROOT)}:{node.lineno} {node.value!r}"
        for module in modules(PACKAGE)
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(("lua/", "web/"))
    ]
    assert not left, "\n".join(left)


LONG_MODULE_LINES = 300


def test_a_long_module_says_why_it_stays_whole() -> None:
    # Past a few hundred lines a module usually holds more than one thing: split it, or
    # say in its docstring ("Kept in one module: ...") why its parts belong together.
    unexplained = [
        f"{module.relative_to(ROOT)} ({lines} lines)"
        for base in (PACKAGE, ENGINE)
        for module in sorted(base.rglob("*.py"))
        if (lines := len(module.read_text(encoding="utf-8").splitlines())) > LONG_MODULE_LINES
        and "Kept in one module" not in (ast.get_docstring(ast.parse(module.read_text())) or "")
    ]
    assert not unexplained, "\n".join(unexplained)


def test_the_readme_module_table_names_every_module() -> None:
    # The README's table is the map from the folders to the path of one change; a module
    # it does not name is a room nobody can find. The command line and the local stack are
    # named as folders.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unnamed = [
        str(module.relative_to(ROOT))
        for base in (PACKAGE, ENGINE)
        for module in sorted(base.rglob("*.py"))
        if module.name not in ("__init__.py", "__main__.py")
        and not module.is_relative_to(PACKAGE / "cli")
        and not module.is_relative_to(PACKAGE / "tools" / "devstack")
        and f"`{module.relative_to(PACKAGE if base == PACKAGE else ROOT)}`" not in readme
    ]
    assert not unnamed, "README's module table lacks:\n" + "\n".join(unnamed)
