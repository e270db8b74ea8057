"""Column values in their JSON-ready form: the few conversions drivers cannot do themselves.

Pure functions. Rows come from drivers as tuples and are passed through untouched unless a
column needs a fix, which is planned once per result-set shape and applied per value.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from patchbay.sql import types

Fix = Callable[[Any], Any]


def decimal(text: Any) -> Any:
    """Write a DECIMAL as a JSON number when that loses nothing, else as its exact text.

    A number is used when the shortest form of the nearest double reads back as the same decimal
    (``"12.50"`` → ``12.5``); ``"12345678901234567.89"`` stays a string. Drivers call it for every
    value (asyncmy ``conv``, an asyncpg codec), so the common case is one length test: a decimal
    of at most 15 significant digits always survives the trip through a double.
    """
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii")
    if len(text) < 16 and text[-1:].isdigit():
        return float(text)
    try:
        number = float(text)
    except ValueError:
        return text
    shortest = repr(number)
    if _trim(shortest) == _trim(text.lstrip("+")):
        return number
    try:
        if Decimal(shortest) == Decimal(text):
            return number
    except InvalidOperation:
        pass
    return text


def _trim(text: str) -> str:
    if "." in text and "e" not in text and "E" not in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def b64(value: Any) -> Any:
    """Binary data as base64 text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    return value


def latin1(value: Any) -> Any:
    """Bytes as the text the server sent, one character per byte (beta-18 passes them raw)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


def null(_: Any) -> None:
    """Drop the value: beta-18 answers ``null`` for types it does not print."""
    return None


def mysql_fix(code: int, charset: int, *, strict: bool) -> Fix | None:
    """The fix a MySQL column's values need after the driver's conversion, if any."""
    binary = charset == types.BINARY_CHARSET
    if strict:
        if code in types.NULLED_CODES or (code in types.BLOB_CODES and binary):
            return null
        if binary and code not in types.INTEGER_CODES | types.FLOAT_CODES:
            return latin1
        return None
    if binary and (code in types.BLOB_CODES or code in (16, 253, 254, 255)):
        return b64
    return None


def keep_columns(indexes: Sequence[int]) -> Fix:
    """A whole-row fix that keeps only the given columns (index ``-1`` in a plan)."""
    keep = tuple(indexes)

    def fix(row: Any) -> Any:
        return [row[i] for i in keep]

    return fix


def apply(rows: Sequence[Sequence[Any]], fixes: Sequence[tuple[int, Fix]]) -> list[list[Any]]:
    """Apply per-column fixes (and whole-row fixes, index ``-1``) to every row."""
    column_fixes = [(i, f) for i, f in fixes if i >= 0]
    row_fixes = [f for i, f in fixes if i < 0]
    out = []
    for row in rows:
        fixed = list(row)
        for i, fix in column_fixes:
            value = fixed[i]
            if value is not None or fix is null:
                fixed[i] = fix(value)
        for fix in row_fixes:
            fixed = fix(fixed)
        out.append(fixed)
    return out
