"""What ``cdc-cache verify`` found: counts and examples per table, nines, the exit code."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any, Final

from cdc_cache.tools.link_judge import FAILING_LINKS, LinkFinding
from cdc_cache.tools.verify_judge import FAILING, Finding

EXAMPLES_PER_CATEGORY: Final = 5
INDEX_FINDINGS: Final = (Finding.STALE, Finding.UNEXPECTED, Finding.MISSING)
"""What an index key can be found (a member has no version of its own to judge)."""


def nines(total: int, bad: int) -> str:
    """``total - bad`` of ``total`` as a percentage cut (never rounded up) to its nines."""
    if total <= 0 or bad <= 0:
        return "100 %"
    good = Decimal(total - bad) / Decimal(total)
    count = 0
    while count < 12 and good >= 1 - Decimal(10) ** -(count + 1):
        count += 1
    pct = (good * 100).quantize(Decimal(10) ** -max(1, count - 1), rounding=ROUND_DOWN)
    return f"{pct.normalize():f} %"


@dataclass
class TableReport:
    """Counts and examples for one table."""

    table: str
    rows: int = 0
    rows_in_table: int = 0
    set_keys: int = 0
    delete_keys: int = 0
    delete_keys_present: int = 0
    findings: Counter[Finding] = field(default_factory=Counter)
    examples: dict[Finding, list[str]] = field(default_factory=dict)
    repaired: Counter[str] | None = None  # --repair: the gate's outcome per rewritten key
    links: int = 0  # links of dependent keys the rows imply (see tools.link_judge)
    link_findings: Counter[LinkFinding] = field(default_factory=Counter)
    link_examples: dict[LinkFinding, list[str]] = field(default_factory=dict)
    indexes: int = 0  # index keys the rows imply (see tools.index_judge)
    members: int = 0  # their members
    index_findings: Counter[Finding] = field(default_factory=Counter)
    index_examples: dict[Finding, list[str]] = field(default_factory=dict)
    unrenderable: int = 0  # rows the rules cannot render (the worker dead-letters them)
    unrenderable_examples: list[str] = field(default_factory=list)

    def add_unrenderable(self, example: str) -> None:
        self.unrenderable += 1
        _example(self.unrenderable_examples, example)

    def add(self, finding: Finding, example: str) -> None:
        self.findings[finding] += 1
        _example(self.examples.setdefault(finding, []), example)

    def add_link(self, finding: LinkFinding, example: str) -> None:
        self.link_findings[finding] += 1
        _example(self.link_examples.setdefault(finding, []), example)

    def add_index(self, finding: Finding, example: str) -> None:
        self.index_findings[finding] += 1
        _example(self.index_examples.setdefault(finding, []), example)


def _example(shown: list[str], example: str) -> None:
    if len(shown) < EXAMPLES_PER_CATEGORY:
        shown.append(example)


@dataclass
class Report:
    """The whole check: per-table results, the consistency figure and the exit code."""

    tables: list[TableReport] = field(default_factory=list)

    def count(self, finding: Finding) -> int:
        return sum(t.findings[finding] for t in self.tables)

    def count_links(self, finding: LinkFinding) -> int:
        return sum(t.link_findings[finding] for t in self.tables)

    def count_index(self, finding: Finding) -> int:
        """Index findings: of members (stale, unexpected) and of whole index keys."""
        return sum(t.index_findings[finding] for t in self.tables)

    @property
    def checked(self) -> int:
        """Keys judged: every expected ``set`` key plus every unexpected one found."""
        return sum(t.set_keys for t in self.tables) + self.count(Finding.UNEXPECTED)

    @property
    def clean(self) -> bool:
        """Nothing at all to report (stricter than the exit code: missing keys count)."""
        return not any(
            t.findings or t.link_findings or t.index_findings or t.unrenderable for t in self.tables
        )

    @property
    def exit_code(self) -> int:
        failing = any(self.count(f) or self.count_index(f) for f in FAILING)
        return 1 if failing or any(self.count_links(f) for f in FAILING_LINKS) else 0

    def as_json(self) -> dict[str, Any]:
        """The report as plain JSON data (``--json``)."""
        bad = sum(self.count(f) for f in FAILING)
        return {
            "tables": [
                {
                    "table": t.table,
                    "rows": t.rows,
                    "rows_in_table": t.rows_in_table,
                    "set_keys": t.set_keys,
                    "delete_keys": t.delete_keys,
                    "delete_keys_present": t.delete_keys_present,
                    "findings": {f.value: t.findings[f] for f in Finding},
                    "examples": {f.value: shown for f, shown in t.examples.items()},
                    "repaired": dict(t.repaired) if t.repaired is not None else None,
                    "links": t.links,
                    "link_findings": {f.value: t.link_findings[f] for f in LinkFinding},
                    "link_examples": {f.value: shown for f, shown in t.link_examples.items()},
                    "indexes": t.indexes,
                    "members": t.members,
                    "index_findings": {f.value: t.index_findings[f] for f in INDEX_FINDINGS},
                    "index_examples": {f.value: shown for f, shown in t.index_examples.items()},
                    "unrenderable": t.unrenderable,
                    "unrenderable_examples": t.unrenderable_examples,
                }
                for t in self.tables
            ],
            "checked": self.checked,
            "consistency": nines(self.checked, bad),
            "findings": {f.value: self.count(f) for f in Finding},
            "links": sum(t.links for t in self.tables),
            "link_findings": {f.value: self.count_links(f) for f in LinkFinding},
            "members": sum(t.members for t in self.tables),
            "index_findings": {f.value: self.count_index(f) for f in INDEX_FINDINGS},
            "unrenderable": sum(t.unrenderable for t in self.tables),
            "exit_code": self.exit_code,
        }

    def format(self) -> str:
        """The human-readable report."""
        lines: list[str] = []
        for t in self.tables:
            sampled = f" (sample of {t.rows_in_table})" if t.rows < t.rows_in_table else ""
            lines.append(
                f"{t.table}: {t.rows} rows{sampled}, {t.set_keys} set keys, "
                f"{t.delete_keys} delete keys ({t.delete_keys_present} present; "
                "filled by the application, not judged)"
            )
            lines.append("  " + "  ".join(f"{f.value} {t.findings[f]}" for f in Finding))
            for finding, examples in t.examples.items():
                for example in examples:
                    lines.append(f"  {finding.value}: {example}")
            if t.unrenderable:
                lines.append(
                    f"  {t.unrenderable} rows the rules cannot render, not judged (the worker "
                    "dead-letters their changes as render_failed and deletes their keys):"
                )
                lines.extend(f"  unrenderable: {example}" for example in t.unrenderable_examples)
            if t.links:
                lines.append(
                    f"  dependent keys: {t.links} links judged: "
                    + "  ".join(f"{f.value} {t.link_findings[f]}" for f in LinkFinding)
                )
                for link_finding, examples in t.link_examples.items():
                    lines.extend(f"  {link_finding.value}: {example}" for example in examples)
            if t.indexes or t.index_findings:
                lines.append(
                    f"  index keys: {t.indexes} indexes, {t.members} members judged: "
                    + "  ".join(f"{f.value} {t.index_findings[f]}" for f in INDEX_FINDINGS)
                )
                for finding, examples in t.index_examples.items():
                    lines.extend(f"  index {finding.value}: {example}" for example in examples)
                if t.repaired is not None and t.index_findings:
                    lines.append(
                        "  --repair leaves index keys as they are: rebuild them with "
                        f"`cdc-cache snapshot --table {t.table}`"
                    )
            if t.repaired is not None:
                shown = ", ".join(f"{n} {outcome}" for outcome, n in sorted(t.repaired.items()))
                lines.append(f"  repaired: {shown or 'nothing to repair'}")
        bad = sum(self.count(f) for f in FAILING)
        lines.append(
            f"total: {self.checked} keys checked; consistency {nines(self.checked, bad)} "
            f"({self.count(Finding.STALE)} stale, {self.count(Finding.UNEXPECTED)} unexpected); "
            f"{self.count(Finding.MISSING)} missing (TTL/eviction or not yet filled); "
            f"{self.count(Finding.VERSION)} version anomalies"
        )
        links = sum(t.links for t in self.tables)
        if links:
            lines.append(
                f"dependent keys: {links} links judged; "
                f"{self.count_links(LinkFinding.UNLINKED)} unlinked (a parent's change would "
                f"miss the key), {self.count_links(LinkFinding.ESCAPED)} escaped (cached past "
                f"a delete), {self.count_links(LinkFinding.UNJUDGED)} unjudged (no version)"
            )
        members = sum(t.members for t in self.tables)
        if members or any(t.index_findings for t in self.tables):
            lines.append(
                f"index keys: {members} members judged; "
                f"{self.count_index(Finding.STALE)} stale (absent or wrong score), "
                f"{self.count_index(Finding.UNEXPECTED)} unexpected; "
                f"{self.count_index(Finding.MISSING)} indexes missing (TTL/eviction, or "
                "awaiting a snapshot)"
            )
        return "\n".join(lines)
