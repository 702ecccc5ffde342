"""Keep the values of sensitive columns out of free text: reasons, stacks, log lines.

A dead letter's stored message and primary key have their sensitive columns redacted
field by field (:func:`cdc_cache.dlq.entries.redact`). Free text needs another approach: a reason
quotes a rendered key (``user:{email}`` becomes ``user:ann@example.com``), a stack repeats
the reason, an error may show a row. So every spelling of every sensitive value the
message carries (as written, escaped into a key, as ``repr`` and JSON show it) is
replaced wherever it occurs in such a text. Pure; used on the dead-letter path only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

import orjson

from cdc_cache.core.events import ChangeEvent, SourceRecord
from cdc_cache.core.keys import escape_value

REDACTED: Final = "***redacted***"
# Deeper than any parsed JSON (the parser stops at 1,024): the walk is a loop, not recursion.
_MAX_WALK_DEPTH: Final = 2048


def spellings(
    sensitive: frozenset[str], event: ChangeEvent | None, record: SourceRecord
) -> tuple[str, ...]:
    """Every text form of the sensitive columns' values in this message, longest first.

    Values come from the decoded change when there is one and from the raw key and value
    when they are JSON (an undecodable message still names its columns), at any depth.
    """
    if not sensitive:
        return ()
    docs: list[Any] = [event.key, event.before, event.after] if event is not None else []
    for raw in (record.key, record.value):
        try:
            docs.append(orjson.loads(raw) if raw is not None else None)
        except orjson.JSONDecodeError:
            continue
    forms = {form for value in _values(docs, sensitive) for form in _forms(value)}
    forms.discard("")
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


def scrub(text: str, forms: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``forms`` replaced by ``***redacted***``."""
    for form in forms:
        text = text.replace(form, REDACTED)
    return text


def _values(docs: list[Any], sensitive: frozenset[str]) -> Iterator[Any]:
    """The values of mapping keys named in ``sensitive``, and every scalar inside them."""
    pending: list[tuple[Any, int, bool]] = [(doc, 0, False) for doc in docs]
    while pending:
        node, depth, inside = pending.pop()
        if depth > _MAX_WALK_DEPTH:
            continue
        if inside and node is not None:
            yield node
        if isinstance(node, dict):
            pending.extend(
                (value, depth + 1, inside or name in sensitive) for name, value in node.items()
            )
        elif isinstance(node, list):
            pending.extend((item, depth + 1, inside) for item in node)


def _forms(value: Any) -> set[str]:
    """How ``value`` may be spelled in a text: as is, escaped in a key, repr, JSON."""
    forms: set[str] = set()
    for render in (str, repr, escape_value, _json):
        try:
            forms.add(render(value))
        except (RecursionError, TypeError, ValueError):
            continue  # too deep to render: then no text carries it rendered either
    if isinstance(value, str):
        forms.update((repr(value)[1:-1], _json(value)[1:-1]))
    return forms


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
