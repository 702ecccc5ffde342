"""The JSON Schema of the rules file, generated from the loader's settings and choices.

Editors validate a rules file while it is typed (``# yaml-language-server: $schema=...``).
The settings each level takes are the loader's own (``TABLE_SETTINGS``, ``KEY_SETTINGS``,
...) and the choices its enums (:class:`~cdc_cache.plan.rules.Action`, ...), so a new
setting or choice changes the schema: :func:`schema` refuses a setting without a
description here, and a unit test fails until the committed file
(``docs/rules.schema.json``, ``cdc-cache rules schema``) is regenerated. The schema says
the file's shape; the loader checks what a schema cannot (columns, watch lists, cycles).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Final

from cdc_cache.plan.cache_ops import ValueFormat
from cdc_cache.plan.key_extras import Snapshot
from cdc_cache.plan.rules import Action
from cdc_cache.plan.rules_loader import (
    DEFAULTS_SETTINGS,
    DEPENDENCY_SETTINGS,
    FIELD_SETTINGS,
    KEY_SETTINGS,
    NOTIFY_SETTINGS,
    ROW_TTL_SETTINGS,
    RULES_VERSIONS,
    TABLE_SETTINGS,
    TOP_SETTINGS,
)
from cdc_cache.source.natural import RENDER_CHOICES, Decimals, Timestamps, Values

SCHEMA_ID: Final = "https://cdc-cache.dev/schemas/rules.schema.json"

Schema = dict[str, Any]

_COLUMN: Final[Schema] = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_$]*$"}
_COLUMNS: Final[Schema] = {"type": "array", "items": {"$ref": "#/$defs/column"}}
_DURATION: Final[Schema] = {
    "description": "500ms, 30s, 15m, 24h, 7d, or a whole number of seconds",
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": r"^\s*\d+\s*(ms|s|m|h|d)?\s*$"},
    ],
}
_EXPRESSION: Final[Schema] = {
    "type": "string",
    "minLength": 1,
    "description": "an expression over the row's columns, e.g. status == 'active' and qty > 0",
}


def _choice(kind: type[StrEnum], description: str) -> Schema:
    return {"enum": [e.value for e in kind], "description": description}


def _object(
    settings: Iterable[str], described: Mapping[str, Schema], required: Iterable[str] = ()
) -> Schema:
    """An object taking exactly the loader's ``settings``, each described here."""
    names = sorted(settings)
    missing = [name for name in names if name not in described]
    extra = [name for name in described if name not in names]
    if missing or extra:
        msg = f"the rules schema does not match the loader: missing {missing}, extra {extra}"
        raise AssertionError(msg)
    schema: Schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: described[name] for name in names},
    }
    if required:
        schema["required"] = sorted(required)
    return schema


def schema() -> Schema:
    """The rules file's JSON Schema (draft 2020-12)."""
    value_choices = {
        "values": _choice(Values, "decoded into their natural form, or as Debezium ships them"),
        "decimals": _choice(Decimals, "how decimals are cached"),
        "timestamps": _choice(Timestamps, "how timestamps are cached"),
    }
    field = {
        "oneOf": [
            {"$ref": "#/$defs/column"},
            {
                **_object(
                    FIELD_SETTINGS,
                    {"name": _COLUMN, "from": _COLUMN, "expr": _EXPRESSION},
                    required=["name"],
                ),
                "oneOf": [{"required": ["from"]}, {"required": ["expr"]}],
            },
        ]
    }
    row_ttl = {
        **_object(
            ROW_TTL_SETTINGS,
            {
                "seconds": {**_EXPRESSION, "description": "seconds to live, from the row"},
                "until": {
                    **_EXPRESSION,
                    "description": "when the row expires: epoch ms or an ISO-8601 time",
                },
            },
        ),
        "minProperties": 1,
        "maxProperties": 1,
    }
    dependency = _object(
        DEPENDENCY_SETTINGS,
        {
            "table": {"type": "string"},
            "via": _COLUMN,
            "through": {"type": "string"},
            "match": {"type": "object", "additionalProperties": _COLUMN},
        },
        required=["table", "via"],
    )
    key = _object(
        KEY_SETTINGS,
        {
            "key": {"type": "string", "description": 'a key template, e.g. "stock:{sku_id}"'},
            "action": _choice(Action, "what a change does with the key"),
            "fields": {"type": "array", "items": field},
            "format": _choice(ValueFormat, "how the value is stored"),
            "ttl": {"oneOf": [_DURATION, row_ttl]},
            "depends_on": {"type": "array", "items": dependency},
            "when": _EXPRESSION,
            "only_if_cached": {"type": "boolean"},
            "member": {
                "type": "string",
                "description": 'an index key\'s member (zadd, sadd), e.g. "{id}"',
            },
            "score": {**_COLUMN, "description": "a sorted set's score column (zadd)"},
        },
        required=["key"],
    )
    notify = _object(
        NOTIFY_SETTINGS,
        {
            "channel": {"type": "string"},
            "fields": _COLUMNS,
            "maxlen": {"type": "integer", "minimum": 1},
        },
        required=["channel"],
    )
    table = _object(
        TABLE_SETTINGS,
        {
            "columns": _COLUMNS,
            "watch": _COLUMNS,
            "keys": {"type": "array", "items": key},
            "tombstone_ttl": _DURATION,
            "sensitive": _COLUMNS,
            "notify": notify,
            **value_choices,
            "types": {"type": "object", "additionalProperties": {"type": "string"}},
            "render": {"type": "object", "additionalProperties": {"enum": list(RENDER_CHOICES)}},
            "invalidate_tags": {"type": "array", "items": {"type": "string"}},
            "snapshot": _choice(Snapshot, "what snapshot rows (op r) do"),
        },
    )
    defaults = _object(
        DEFAULTS_SETTINGS,
        {
            "safety_ttl": _DURATION,
            "tombstone_ttl": _DURATION,
            "format": _choice(ValueFormat, "how values are stored"),
            **value_choices,
        },
    )
    top = _object(
        TOP_SETTINGS,
        {
            "version": {"enum": list(RULES_VERSIONS)},
            "defaults": defaults,
            "tables": {
                "type": "object",
                "propertyNames": {"pattern": r"^[^.\s]+\.[^.\s]+$"},
                "additionalProperties": table,
            },
        },
        required=["tables"],
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "cdc-cache rules file",
        **top,
        "$defs": {"column": _COLUMN},
    }
