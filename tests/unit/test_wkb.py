"""WKB and EWKB geometries as WKT."""

from __future__ import annotations

import struct

import pytest

from cdc_cache.source.wkb import mysql_wkt, number, wkt


def point(x: float, y: float, order: str = "<") -> bytes:
    return struct.pack(f"{order}BIdd", 1 if order == "<" else 0, 1, x, y)


def test_every_geometry_type_in_either_byte_order() -> None:
    assert wkt(point(1.5, 2)) == "POINT(1.5 2)"
    assert wkt(point(-1, 0.25, ">")) == "POINT(-1 0.25)"
    line = struct.pack("<BII", 1, 2, 2) + struct.pack("<4d", 0, 0, 1, 1.5)
    assert wkt(line) == "LINESTRING(0 0,1 1.5)"
    ring = struct.pack("<I", 4) + struct.pack("<8d", 0, 0, 4, 0, 4, 4, 0, 0)
    polygon = struct.pack("<BII", 1, 3, 1) + ring
    assert wkt(polygon) == "POLYGON((0 0,4 0,4 4,0 0))"
    multipoint = struct.pack("<BII", 1, 4, 2) + point(0, 0) + point(1, 1)
    assert wkt(multipoint) == "MULTIPOINT((0 0),(1 1))"
    multipolygon = struct.pack("<BII", 1, 6, 1) + polygon
    assert wkt(multipolygon) == "MULTIPOLYGON(((0 0,4 0,4 4,0 0)))"
    collection = struct.pack("<BII", 1, 7, 2) + point(1, 2) + line
    assert wkt(collection) == "GEOMETRYCOLLECTION(POINT(1 2),LINESTRING(0 0,1 1.5))"
    assert wkt(struct.pack("<BII", 1, 7, 0)) == "GEOMETRYCOLLECTION EMPTY"
    assert wkt(point(float("nan"), float("nan"))) == "POINT EMPTY"


def test_ewkb_srid_and_z_as_postgis_writes_them() -> None:
    ewkb = struct.pack("<BII", 1, 0x20000001 | 0x80000000, 4326) + struct.pack("<3d", 1, 2, 3)
    assert wkt(ewkb) == "POINT Z(1 2 3)"
    iso_m = struct.pack("<BI", 1, 2001) + struct.pack("<3d", 1, 2, 3)
    assert wkt(iso_m) == "POINT M(1 2 3)"


def test_mysqls_internal_form_has_the_srid_first() -> None:
    assert mysql_wkt(struct.pack("<I", 4326) + point(1.5, 2)) == "POINT(1.5 2)"


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (point(1, 2)[:-1], "ends early"),
        (point(1, 2) + b"\x00", "after the geometry"),
        (struct.pack("<BI", 1, 99), "geometry type 99"),
        (b"\x02" + point(1, 2)[1:], "byte order marker 2"),
        (b"\x00\x00", "at least 9 bytes"),
    ],
)
def test_malformed_geometries_say_why(data: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        mysql_wkt(data) if complaint.startswith("at least") else wkt(data)


def test_numbers_print_as_the_databases_do() -> None:
    assert [number(v) for v in (2.0, -0.5, 1e20, 0.1)] == ["2", "-0.5", "1e+20", "0.1"]
