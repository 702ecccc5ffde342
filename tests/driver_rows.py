"""Database rows as PyMySQL and psycopg return them, kept in JSON and read back exactly.

The recorder (``scripts/record-debezium-fixtures --values``) reads each row of the values
table with the drivers after every scenario; the contract test feeds those rows to the
fill helper and compares with what the worker writes from the recorded events. Every
Python value a driver returns is tagged with its type (``{"$decimal": "12.5000"}``), so a
``Decimal`` comes back a ``Decimal`` with its scale, a naive ``datetime`` naive, an aware
one with its offset, a ``timedelta`` to the microsecond.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import uuid
from decimal import Decimal
from typing import Any

_IP = {
    "IPv4Address": ipaddress.IPv4Address,
    "IPv6Address": ipaddress.IPv6Address,
    "IPv4Interface": ipaddress.IPv4Interface,
    "IPv6Interface": ipaddress.IPv6Interface,
    "IPv4Network": ipaddress.IPv4Network,
    "IPv6Network": ipaddress.IPv6Network,
}


def dump(value: Any) -> Any:
    """``value`` as JSON-able data that :func:`load` turns back into the same value."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return {"$float": repr(value)}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if type(value).__name__ in _IP:
        return {"$ip": [type(value).__name__, str(value)]}
    if isinstance(value, list):
        return {"$list": [dump(v) for v in value]}
    if isinstance(value, dict):
        return {"$dict": {k: dump(v) for k, v in value.items()}}
    msg = f"no tag for {type(value).__name__}"
    raise TypeError(msg)


def load(data: Any) -> Any:
    """The value :func:`dump` was given."""
    if not isinstance(data, dict):
        return data
    ((tag, body),) = data.items()
    readers = {
        "$float": float,
        "$decimal": Decimal,
        "$datetime": dt.datetime.fromisoformat,
        "$date": dt.date.fromisoformat,
        "$time": dt.time.fromisoformat,
        "$timedelta": lambda b: dt.timedelta(days=b[0], seconds=b[1], microseconds=b[2]),
        "$bytes": base64.b64decode,
        "$uuid": uuid.UUID,
        "$ip": lambda b: _IP[b[0]](b[1]),
        "$list": lambda b: [load(v) for v in b],
        "$dict": lambda b: {k: load(v) for k, v in b.items()},
    }
    return readers[tag](body)


def dump_row(row: dict[str, Any]) -> dict[str, Any]:
    return {name: dump(value) for name, value in row.items()}


def load_row(data: dict[str, Any]) -> dict[str, Any]:
    return {name: load(value) for name, value in data.items()}
