"""What an application fill writes: a database row as the exact bytes the worker writes.

The worker and the application write the same keys, the worker on every change, the
application on a miss (:class:`~cdc_cache.aside.cache_aside.CacheAside`). A :class:`RowCodec` turns
a row as PyMySQL or psycopg return it (``datetime``, ``Decimal``, ``dict``, ``UUID``...)
into the key and the value the worker writes for the same row under the same rule: the
values go through :mod:`cdc_cache.source.natural` and the projection and serialization are the
planner's own (:func:`cdc_cache.plan.planner.encode`), so a key reads the same whoever wrote it.

Types a driver's values do not tell (a MySQL TIMESTAMP is returned as a naive
``datetime`` in the session's time zone, MySQL JSON as text, ``real`` as a float) come
from the rules' ``types:`` or from the cursor (:func:`~cdc_cache.source.natural.cursor_types`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from cdc_cache.core.logical import ColumnType
from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.planner import encode
from cdc_cache.plan.rules import Action, KeyRule, Rules, TableRules
from cdc_cache.source.natural import cursor_types

__all__ = ["RowCodec", "cursor_types"]


class RowCodec:
    """The key and value one rule of ``table`` gets for a database row.

    ``key`` picks the rule by its template (``"stock:{sku_id}:{warehouse}"``); by default
    the table's first ``set`` rule. ``zone`` is the session time zone of the connection
    the rows are read with: the zone of naive values of zoned columns (MySQL TIMESTAMP).
    ``described`` are column types read from a cursor over the table
    (:func:`cursor_types`), used where a call gives none.
    Raises ValueError when the table is not covered, has no such rule, or caches values
    as Debezium ships them (rules version 1): a fill cannot reproduce those.
    """

    def __init__(
        self,
        rules: Rules,
        table: str,
        *,
        key: str | None = None,
        zone: dt.tzinfo = dt.UTC,
        described: Mapping[str, ColumnType] | None = None,
    ) -> None:
        found = rules.for_table(table)
        if found is None:
            msg = f"RowCodec: {table} is not covered by {rules.path}"
            raise ValueError(msg)
        if not found.values.natural:
            msg = (
                f"RowCodec: {rules.path} caches {table}'s values as Debezium ships them; "
                "fills write them decoded: set version: 2 (or values: natural) in the rules"
            )
            raise ValueError(msg)
        self.table: TableRules = found
        self.rule: KeyRule = _pick(found, key, rules.path)
        self._zone = zone
        self._described = described

    def row(
        self, row: Mapping[str, Any], described: Mapping[str, ColumnType] | None = None
    ) -> dict[str, Any]:
        """``row`` with its values as the worker caches them.

        ``described``: column types read from the cursor (:func:`cursor_types`).
        """
        return self.table.values.driver_row(row, described or self._described, self._zone)

    def key(self, values: Mapping[str, Any]) -> str:
        """The rule's key for a row with these column values (the key's columns suffice)."""
        return self.rule.template.render(self.row(values))

    def value(
        self, row: Mapping[str, Any], described: Mapping[str, ColumnType] | None = None
    ) -> bytes:
        """The bytes the worker writes for ``row`` (a ``format: json`` rule)."""
        encoded = encode(self.rule, self.row(row, described))
        if not isinstance(encoded, bytes):
            msg = f"{self.rule.template.source} is a format: hash rule; use fields()"
            raise ValueError(msg)
        return encoded

    def fields(
        self, row: Mapping[str, Any], described: Mapping[str, ColumnType] | None = None
    ) -> dict[str, str]:
        """The hash fields the worker writes for ``row`` (a ``format: hash`` rule)."""
        if self.rule.format is not ValueFormat.HASH:
            msg = f"{self.rule.template.source} is a format: json rule; use value()"
            raise ValueError(msg)
        encoded = encode(self.rule, self.row(row, described))
        assert not isinstance(encoded, bytes)
        return dict(encoded)


def _pick(table: TableRules, key: str | None, path: str) -> KeyRule:
    sets = [rule for rule in table.keys if rule.action is Action.SET]
    for rule in sets:
        if key is None or rule.template.source == key:
            return rule
    known = ", ".join(repr(rule.template.source) for rule in sets) or "none"
    wanted = f"key {key!r}" if key is not None else "a set rule"
    msg = f"RowCodec: {table.table} in {path} has no {wanted}; its set rules: {known}"
    raise ValueError(msg)
