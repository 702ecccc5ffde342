"""``cdc-cache rules check``: a rules file validated, and checked against the live database.

The loader's checks come first (every problem with its file and line); with a database
(MariaDB/MySQL or PostgreSQL, read through the connection ``verify`` uses) every covered
table must exist and every column a rule names must be one of its columns, the same
comparison the worker makes with each table's columns as its changes show them
(:func:`cdc_cache.mode.schema_watch.problems`), here before any change is dead-lettered.
A typo in both ``watch`` and ``fields`` passes the loader but not this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdc_cache.core.errors import ConfigError
from cdc_cache.core.redact import redact_url
from cdc_cache.mode.schema_watch import problems
from cdc_cache.plan.rules import Rules
from cdc_cache.plan.rules_loader import RulesInvalid, load_rules
from cdc_cache.tools.verify_reads import Database

_LINE = re.compile(r"^(?P<file>.*?):(?P<line>\d+): ")


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem: ``file:line: where: what; how to fix``."""

    text: str

    def as_json(self) -> dict[str, Any]:
        """The problem, with its file and line apart for tools."""
        found = _LINE.match(self.text)
        if found is None:  # pragma: no cover - every problem names its line
            return {"file": None, "line": None, "message": self.text}
        return {
            "file": found["file"],
            "line": int(found["line"]),
            "message": self.text[found.end() :],
        }


@dataclass
class CheckReport:
    """What ``rules check`` found; exit code 0 when the file fits, 1 when it does not."""

    rules: str
    database: str | None
    tables: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: the rules fit; 1: problems to fix."""
        return 1 if self.problems else 0

    def format(self) -> str:
        """The report for a terminal."""
        checked = f" against {self.database}" if self.database else ""
        if not self.problems:
            return f"{self.rules}: ok ({len(self.tables)} tables{checked})"
        listing = "\n".join(f"  {p.text}" for p in self.problems)
        return f"{self.rules}: {len(self.problems)} problem(s){checked}:\n{listing}"

    def as_json(self) -> dict[str, Any]:
        """The report as one JSON document."""
        return {
            "rules": self.rules,
            "database": self.database,
            "ok": not self.problems,
            "tables": self.tables,
            "problems": [p.as_json() for p in self.problems],
        }


def check(path: Path, dsn: str | None = None) -> CheckReport:
    """Validate the rules file at ``path`` and, with ``dsn``, its tables and columns.

    Raises ConfigError when the check cannot run (unreadable file, unreachable database).
    """
    report = CheckReport(str(path), redact_url(dsn) if dsn else None)
    try:
        rules = load_rules(path)
    except RulesInvalid as exc:
        report.problems = [Problem(text) for text in exc.problems]
        return report
    report.tables = sorted(rules.tables)
    if dsn is not None:
        report.problems = against_database(rules, Database.connect(dsn))
    return report


def against_database(rules: Rules, db: Database) -> list[Problem]:
    """Every covered table that ``db`` lacks and every column a rule names that it lacks."""
    found: list[Problem] = []
    try:
        for name, table in sorted(rules.tables.items()):
            columns = db.columns(name)
            if not columns:
                found.append(
                    Problem(
                        f"{rules.path}:{table.line}: tables.{name}: no such table in the "
                        "database (or not visible to this user); fix the name "
                        "(<db>.<table> or <schema>.<table>) or the --db DSN"
                    )
                )
                continue
            found += [Problem(p.text()) for p in problems(table, columns, rules.path)]
    except ConfigError:
        raise
    except Exception as exc:
        msg = f"reading the database's columns failed: {exc}; check --db"
        raise ConfigError(msg) from exc
    finally:
        db.close()
    return found
