"""Column types of every backend, named as DBSlayer names them (``MYSQL_TYPE_*``).

Pure tables and functions: MySQL field type codes, PostgreSQL type names and SQLite value types
all map to the names DBSlayer's clients already know.
"""

from __future__ import annotations

from typing import Final

UNKNOWN: Final = "MYSQL_TYPE_UNKNOWN"
BINARY_CHARSET: Final = 63

# MySQL protocol field type codes (include/mysql_com.h, enum_field_types).
MYSQL_NAMES: Final[dict[int, str]] = {
    0: "MYSQL_TYPE_DECIMAL",
    1: "MYSQL_TYPE_TINY",
    2: "MYSQL_TYPE_SHORT",
    3: "MYSQL_TYPE_LONG",
    4: "MYSQL_TYPE_FLOAT",
    5: "MYSQL_TYPE_DOUBLE",
    6: "MYSQL_TYPE_NULL",
    7: "MYSQL_TYPE_TIMESTAMP",
    8: "MYSQL_TYPE_LONGLONG",
    9: "MYSQL_TYPE_INT24",
    10: "MYSQL_TYPE_DATE",
    11: "MYSQL_TYPE_TIME",
    12: "MYSQL_TYPE_DATETIME",
    13: "MYSQL_TYPE_YEAR",
    14: "MYSQL_TYPE_NEWDATE",
    15: "MYSQL_TYPE_VARCHAR",
    16: "MYSQL_TYPE_BIT",
    246: "MYSQL_TYPE_NEWDECIMAL",
    247: "MYSQL_TYPE_ENUM",
    248: "MYSQL_TYPE_SET",
    249: "MYSQL_TYPE_TINY_BLOB",
    250: "MYSQL_TYPE_MEDIUM_BLOB",
    251: "MYSQL_TYPE_LONG_BLOB",
    252: "MYSQL_TYPE_BLOB",
    253: "MYSQL_TYPE_VAR_STRING",
    254: "MYSQL_TYPE_STRING",
    255: "MYSQL_TYPE_GEOMETRY",
}
# Names DBSlayer never knew; beta-18 calls them UNKNOWN and drops their values.
MYSQL_EXTRA_NAMES: Final[dict[int, str]] = {245: "MYSQL_TYPE_JSON"}

INTEGER_CODES: Final = frozenset({1, 2, 3, 9})
LONGLONG: Final = 8
DECIMAL_CODES: Final = frozenset({0, 246})
FLOAT_CODES: Final = frozenset({4, 5})
BLOB_CODES: Final = frozenset({249, 250, 251, 252})
NULLED_CODES: Final = frozenset({6, 247, 248, 255})


def mysql_name(code: int, charset: int, *, strict: bool) -> str:
    """Name a MySQL column type as DBSlayer does.

    beta-18 labels binary BLOBs ``MYSQL_TYPE_TEXT`` (and TEXT columns ``MYSQL_TYPE_BLOB``);
    the default mode keeps TEXT columns as they were and gives binary BLOBs their real name.
    """
    if code in BLOB_CODES and charset == BINARY_CHARSET and strict:
        return "MYSQL_TYPE_TEXT"
    name = MYSQL_NAMES.get(code)
    if name is None:
        return UNKNOWN if strict else MYSQL_EXTRA_NAMES.get(code, UNKNOWN)
    return name


# PostgreSQL type names (pg_type.typname) to the nearest MySQL type.
POSTGRES_NAMES: Final[dict[str, str]] = {
    "bool": "MYSQL_TYPE_TINY",
    "int2": "MYSQL_TYPE_SHORT",
    "int4": "MYSQL_TYPE_LONG",
    "oid": "MYSQL_TYPE_LONG",
    "int8": "MYSQL_TYPE_LONGLONG",
    "numeric": "MYSQL_TYPE_NEWDECIMAL",
    "money": "MYSQL_TYPE_NEWDECIMAL",
    "float4": "MYSQL_TYPE_FLOAT",
    "float8": "MYSQL_TYPE_DOUBLE",
    "varchar": "MYSQL_TYPE_VAR_STRING",
    "text": "MYSQL_TYPE_VAR_STRING",
    "name": "MYSQL_TYPE_VAR_STRING",
    "bpchar": "MYSQL_TYPE_STRING",
    "char": "MYSQL_TYPE_STRING",
    "uuid": "MYSQL_TYPE_STRING",
    "bytea": "MYSQL_TYPE_BLOB",
    "date": "MYSQL_TYPE_DATE",
    "time": "MYSQL_TYPE_TIME",
    "timetz": "MYSQL_TYPE_TIME",
    "timestamp": "MYSQL_TYPE_DATETIME",
    "timestamptz": "MYSQL_TYPE_TIMESTAMP",
    "json": "MYSQL_TYPE_JSON",
    "jsonb": "MYSQL_TYPE_JSON",
    "bit": "MYSQL_TYPE_BIT",
    "varbit": "MYSQL_TYPE_BIT",
    "unknown": "MYSQL_TYPE_NULL",
}


def postgres_name(typname: str) -> str:
    """Name a PostgreSQL column type as the nearest MySQL type (text types otherwise)."""
    return POSTGRES_NAMES.get(typname, "MYSQL_TYPE_VAR_STRING")


def sqlite_name(value: object) -> str:
    """Name a SQLite column by the storage class of its first non-NULL value."""
    if value is None:
        return "MYSQL_TYPE_NULL"
    if isinstance(value, int):
        return "MYSQL_TYPE_LONGLONG"
    if isinstance(value, float):
        return "MYSQL_TYPE_DOUBLE"
    if isinstance(value, bytes):
        return "MYSQL_TYPE_BLOB"
    return "MYSQL_TYPE_VAR_STRING"


def version_number(version: str) -> int:
    """Turn ``'10.11.19-MariaDB'`` into MySQL's numeric form ``101119``."""
    if version.startswith("5.5.5-"):  # MariaDB's prefix for old replication clients
        version = version[len("5.5.5-") :]
    parts = []
    for piece in version.split("-", 1)[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    parts += [0] * (3 - len(parts))
    return parts[0] * 10000 + parts[1] * 100 + parts[2]
