"""Column value fixes and type names."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchbay.sql import types, values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.50", 12.5),
        ("3325.99", 3325.99),
        ("1.00", 1.0),
        ("-0.10", -0.1),
        ("0", 0.0),
        ("10000000000000000", 1e16),
        ("12345678901234567.89", "12345678901234567.89"),
        ("0.1000000000000000055511151231257827", "0.1000000000000000055511151231257827"),
    ],
)
def test_decimal_is_a_number_only_when_exact(text: str, expected: object) -> None:
    """A DECIMAL becomes a JSON number only when its shortest double reads back the same."""
    assert values.decimal(text) == expected
    assert type(values.decimal(text)) is type(expected)


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=4, max_value=10**20, min_value=-(10**20)
    )
)
def test_decimal_never_loses_a_digit(number: Decimal) -> None:
    """Whatever the choice, the value written reads back as the same decimal."""
    written = values.decimal(str(number))
    assert Decimal(repr(written) if isinstance(written, float) else written) == number


def test_binary_values_become_base64() -> None:
    """Binary BLOBs are written as base64 text in the default mode."""
    assert values.b64(b"\x00\x01") == "AAE="
    fix = values.mysql_fix(252, types.BINARY_CHARSET, strict=False)
    assert fix is values.b64


def test_strict_mode_nulls_binary_blobs() -> None:
    """beta-18 never returns binary data: null, typed MYSQL_TYPE_TEXT."""
    assert values.mysql_fix(252, types.BINARY_CHARSET, strict=True) is values.null
    assert types.mysql_name(252, types.BINARY_CHARSET, strict=True) == "MYSQL_TYPE_TEXT"
    assert types.mysql_name(252, 45, strict=True) == "MYSQL_TYPE_BLOB"


def test_apply_fixes_only_the_planned_columns() -> None:
    """Per-column fixes run on non-null values; row fixes drop unknown columns."""
    rows = [(1, b"\x01", None), (2, None, "x")]
    fixes = [(1, values.b64), (-1, values.keep_columns([0, 1]))]
    assert values.apply(rows, fixes) == [[1, "AQ=="], [2, None]]


def test_unknown_types() -> None:
    """A type beta-18 does not know is UNKNOWN in strict mode, named by default."""
    assert types.mysql_name(245, 63, strict=True) == types.UNKNOWN
    assert types.mysql_name(245, 63, strict=False) == "MYSQL_TYPE_JSON"


def test_version_numbers() -> None:
    """Versions read as MySQL's numeric form, MariaDB's 5.5.5- prefix removed."""
    assert types.version_number("5.5.5-10.11.19-MariaDB") == 101119
    assert types.version_number("3.3.20") == 30320
    assert types.version_number("15") == 150000


def test_postgres_and_sqlite_names() -> None:
    """Other backends' columns get the nearest MYSQL_TYPE_* name."""
    assert types.postgres_name("int8") == "MYSQL_TYPE_LONGLONG"
    assert types.postgres_name("numeric") == "MYSQL_TYPE_NEWDECIMAL"
    assert types.postgres_name("tsvector") == "MYSQL_TYPE_VAR_STRING"
    assert types.sqlite_name(1) == "MYSQL_TYPE_LONGLONG"
    assert types.sqlite_name(b"") == "MYSQL_TYPE_BLOB"
    assert types.sqlite_name(None) == "MYSQL_TYPE_NULL"
