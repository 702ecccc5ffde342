"""Well-Known Binary geometries written as Well-Known Text, for cached geometry columns.

Debezium ships MySQL's spatial columns and PostGIS geometries as ``{"wkb", "srid"}``;
PyMySQL returns MySQL's internal form (a 4-byte SRID, then the WKB) and psycopg PostGIS's
hex EWKB. Both become the same text here, so a geometry reads the same whoever wrote it:
``POINT(1.5 2)``, ``LINESTRING(0 0,1 1.5)``, ``POLYGON((0 0,4 0,4 4,0 0))``. Z and M
coordinates are kept (``POINT Z(1 2 3)``); the SRID is not part of the text.

Pure; malformed input raises ValueError.
"""

from __future__ import annotations

import math
import struct
from typing import Final

_TYPES: Final = {
    1: "POINT",
    2: "LINESTRING",
    3: "POLYGON",
    4: "MULTIPOINT",
    5: "MULTILINESTRING",
    6: "MULTIPOLYGON",
    7: "GEOMETRYCOLLECTION",
}
_EWKB_Z: Final = 0x80000000
_EWKB_M: Final = 0x40000000
_EWKB_SRID: Final = 0x20000000
_MAX_DEPTH: Final = 32


def wkt(wkb: bytes) -> str:
    """The WKT of a WKB or EWKB geometry."""
    reader = _Reader(wkb)
    text = reader.geometry(0)
    if reader.at != len(wkb):
        msg = f"{len(wkb) - reader.at} byte(s) after the geometry"
        raise ValueError(msg)
    return text


def mysql_wkt(value: bytes) -> str:
    """The WKT of a geometry in MySQL's internal form: a 4-byte SRID, then the WKB."""
    if len(value) < 9:
        msg = f"a MySQL geometry is at least 9 bytes, got {len(value)}"
        raise ValueError(msg)
    return wkt(value[4:])


def number(value: float) -> str:
    """A coordinate as MySQL and PostGIS print it: ``2`` rather than ``2.0``."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> tuple[float | int, ...]:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            msg = "geometry ends early"
            raise ValueError(msg)
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return values

    def geometry(self, depth: int) -> str:
        if depth > _MAX_DEPTH:
            msg = "geometry nested too deeply"
            raise ValueError(msg)
        (order,) = self.take("B")
        if order not in (0, 1):
            msg = f"byte order marker {order} is neither 0 nor 1"
            raise ValueError(msg)
        endian = "<" if order == 1 else ">"
        (code,) = self.take(endian + "I")
        code = int(code)
        has_z, has_m = bool(code & _EWKB_Z), bool(code & _EWKB_M)
        if code & _EWKB_SRID:
            self.take(endian + "I")
        code &= 0x0FFFFFFF
        iso, code = divmod(code, 1000)  # ISO WKB: 1000 Z, 2000 M, 3000 ZM
        has_z = has_z or iso in (1, 3)
        has_m = has_m or iso in (2, 3)
        name = _TYPES.get(code)
        if name is None:
            msg = f"geometry type {code} is not one of {sorted(_TYPES)}"
            raise ValueError(msg)
        dims = 2 + has_z + has_m
        tag = name + (" " + "Z" * has_z + "M" * has_m if has_z or has_m else "")
        body = self.body(code, endian, dims, depth)
        return f"{tag} EMPTY" if body is None else f"{tag}{body}"

    def point(self, endian: str, dims: int) -> str | None:
        coords = self.take(endian + "d" * dims)
        if all(math.isnan(c) for c in coords):  # every coordinate NaN: an empty point
            return None
        return " ".join(number(float(c)) for c in coords)

    def points(self, endian: str, dims: int) -> str | None:
        (count,) = self.take(endian + "I")
        parts = [self.point(endian, dims) or "" for _ in range(int(count))]
        return f"({','.join(parts)})" if parts else None

    def body(self, code: int, endian: str, dims: int, depth: int) -> str | None:
        if code == 1:
            point = self.point(endian, dims)
            return None if point is None else f"({point})"
        if code == 2:
            return self.points(endian, dims)
        (count,) = self.take(endian + "I")
        if code == 3:
            rings = [self.points(endian, dims) or "EMPTY" for _ in range(int(count))]
            return f"({','.join(rings)})" if rings else None
        members = [self.member(code, depth) for _ in range(int(count))]
        return f"({','.join(members)})" if members else None

    def member(self, code: int, depth: int) -> str:
        """One member of a multi-geometry or collection, itself a whole WKB geometry."""
        text = self.geometry(depth + 1)
        if code == 7:
            return text
        return text[text.index("(") :] if "(" in text else "EMPTY"
