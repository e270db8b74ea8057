"""Non-JSON output forms of the DBSlayer-compatible SQL gateway: XML, PHP and Python.

DBSlayer answers in JSON by default but can render the same result tree as XML, as PHP
``serialize()`` data or as a Python literal. All three writers here are pure functions from a
JSON-like value tree (:data:`Value`) to ``bytes``.

They are hand-written on purpose:

* No maintained library writes DBSlayer's XML mapping. It is not a generic "JSON to XML"
  convention (an empty array is the bare text ``[]``, strings are unquoted, numbers use C
  ``printf`` formats), and clients that parse it byte-for-byte need exactly what beta-18 sent.
* The PHP ``serialize()`` writers on PyPI are unmaintained, and the subset we need (null, bool,
  int, float, string, array) is a few lines. The tests check the output with a real PHP.
* The Python form is ``repr`` with sorted keys plus a spelling for infinities, which is
  simpler than configuring ``pprint``.

Object keys are written in byte-wise order of their UTF-8 encoding, as DBSlayer's skip-list
(``strcmp``) did. Python compares ``str`` by code point, which orders every string exactly
as its UTF-8 bytes compare, so a plain ``sorted()`` gives that order without encoding keys.

Values come from database result sets (nesting depth of about four), so the writers recurse.
Strings must be encodable as UTF-8: a lone surrogate raises :class:`UnicodeEncodeError` in
:func:`to_xml` and :func:`to_php`.
"""

from __future__ import annotations

import math
import re
from typing import TypeAlias

__all__ = [
    "PHP_CONTENT_TYPE",
    "PYTHON_CONTENT_TYPE",
    "XML_CONTENT_TYPE",
    "Value",
    "to_php",
    "to_python",
    "to_xml",
]

Value: TypeAlias = (
    dict[str, "Value"] | list["Value"] | tuple["Value", ...] | str | int | float | bool | None
)
"""A JSON-like value tree: what a result set turns into before it is written out."""

XML_CONTENT_TYPE = b"text/xml"
"""``Content-Type`` of :func:`to_xml` output; DBSlayer sends exactly ``text/xml``."""

PHP_CONTENT_TYPE = b"text/plain; charset=utf-8"
"""``Content-Type`` of :func:`to_php` output."""

PYTHON_CONTENT_TYPE = b"text/plain; charset=utf-8"
"""``Content-Type`` of :func:`to_python` output."""

# PHP turns a string array key into an integer key when it is the canonical decimal form of
# an integer in the platform's (64-bit) range: "0", "7", "-7", but not "07", "-0", "+7",
# " 7" or "9223372036854775808".
_PHP_INT_KEY = re.compile(r"0|-?[1-9][0-9]*", re.ASCII)
_PHP_INT_MIN = -(2**63)
_PHP_INT_MAX = 2**63 - 1


def _type_error(value: object) -> TypeError:
    return TypeError(f"cannot write a value of type {type(value).__name__}")


# --------------------------------------------------------------------------------------- XML


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml(value: Value, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append("%g" % value)
    elif isinstance(value, str):
        out.append(_xml_text(value))
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        out.append("<array>")
        for item in value:
            out.append("<item>")
            _xml(item, out)
            out.append("</item>")
        out.append("</array>")
    elif isinstance(value, dict):
        out.append("<object>")
        for key in sorted(value):
            out.append("<key>")
            out.append(_xml_text(key))
            out.append("</key><value>")
            _xml(value[key], out)
            out.append("</value>")
        out.append("</object>")
    else:
        raise _type_error(value)


def to_xml(value: Value) -> bytes:
    """Render *value* as DBSlayer beta-18's XML, byte for byte, encoded as UTF-8.

    Objects become ``<object><key>K</key><value>V</value>...</object>`` with keys in byte-wise
    order (an empty object is ``<object></object>``); arrays become
    ``<array><item>V</item>...</array>`` except that an empty array is the bare text ``[]``.
    Strings and keys are unquoted with only ``&``, ``<`` and ``>`` escaped. Integers are
    written in decimal (C ``%ld``; integers beyond 64 bits are written exactly rather than
    wrapped), floats with C ``%g`` (six significant digits, ``inf``/``-inf``/``nan`` for
    non-finite values), booleans as ``true``/``false`` and ``None`` as ``null``. There is no
    XML declaration.

    Raises:
        TypeError: if the tree holds a value that is not part of :data:`Value`.
        UnicodeEncodeError: if a string holds a lone surrogate.

    """
    out: list[str] = []
    _xml(value, out)
    return "".join(out).encode("utf-8")


# --------------------------------------------------------------------------------------- PHP


def _php_float(value: float) -> str:
    if math.isnan(value):
        return "d:NAN;"
    if math.isinf(value):
        return "d:INF;" if value > 0 else "d:-INF;"
    # repr() is the shortest string that reads back to the same double, and its forms
    # ("0.1", "1e-05", "1e+25", "-0.0") all match PHP's unserialize grammar.
    return f"d:{float.__repr__(value)};"


def _php_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b's:%d:"%b";' % (len(raw), raw)


def _php_key(key: str) -> bytes:
    if _PHP_INT_KEY.fullmatch(key) is not None and _PHP_INT_MIN <= int(key) <= _PHP_INT_MAX:
        return b"i:%s;" % key.encode("ascii")
    return _php_string(key)


def _php(value: Value, out: list[bytes]) -> None:
    if value is None:
        out.append(b"N;")
    elif isinstance(value, bool):
        out.append(b"b:1;" if value else b"b:0;")
    elif isinstance(value, int):
        number = int(value)
        if _PHP_INT_MIN <= number <= _PHP_INT_MAX:
            out.append(b"i:%d;" % number)
        else:
            # PHP clamps an out-of-range "i:" (with a warning); json_decode() makes such a
            # number a float, so do the same. float() raises OverflowError past ~1.8e308.
            out.append(_php_float(float(number)).encode("ascii"))
    elif isinstance(value, float):
        out.append(_php_float(value).encode("ascii"))
    elif isinstance(value, str):
        out.append(_php_string(value))
    elif isinstance(value, list | tuple):
        out.append(b"a:%d:{" % len(value))
        for index, item in enumerate(value):
            out.append(b"i:%d;" % index)
            _php(item, out)
        out.append(b"}")
    elif isinstance(value, dict):
        out.append(b"a:%d:{" % len(value))
        for key in sorted(value):
            out.append(_php_key(key))
            _php(value[key], out)
        out.append(b"}")
    else:
        raise _type_error(value)


def to_php(value: Value) -> bytes:
    """Render *value* in PHP ``serialize()`` format, so ``unserialize()`` reads it back.

    ``None`` is ``N;``, booleans ``b:1;``/``b:0;``, integers ``i:N;``, floats ``d:...;``
    (shortest round-tripping form; ``INF``, ``-INF`` and ``NAN`` for non-finite values) and
    strings ``s:N:"...";`` where N is the UTF-8 byte length and the bytes are raw. A list
    becomes ``a:N:{i:0;...i:1;...}``; a dict becomes ``a:N:{key value ...}`` with keys in
    byte-wise order, each written as ``s:len:"key";`` unless it is the canonical decimal form
    of a 64-bit integer (``"1"``, ``"-5"``; not ``"01"`` or ``"-0"``), which PHP would turn
    into an integer key, so it is written ``i:1;`` exactly as PHP's own ``serialize()`` of
    the unserialized array would write it.

    Integers outside PHP's 64-bit range are written as floats, which is what PHP's
    ``json_decode()`` makes of them.

    Raises:
        TypeError: if the tree holds a value that is not part of :data:`Value`.
        UnicodeEncodeError: if a string holds a lone surrogate.
        OverflowError: if an integer is too large even for a float.

    """
    out: list[bytes] = []
    _php(value, out)
    return b"".join(out)


# ------------------------------------------------------------------------------------ Python


def _python(value: Value, out: list[str]) -> None:
    if value is None:
        out.append("None")
    elif isinstance(value, bool):
        out.append("True" if value else "False")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if math.isnan(value):
            raise ValueError("NaN has no Python literal that ast.literal_eval() can read")
        if math.isinf(value):
            # Overflowing literals are read as infinity by the parser and literal_eval.
            out.append("1e999" if value > 0 else "-1e999")
        else:
            out.append(float.__repr__(value))
    elif isinstance(value, str):
        out.append(str.__repr__(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(", ")
            _python(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for index, key in enumerate(sorted(value)):
            if index:
                out.append(", ")
            out.append(str.__repr__(key))
            out.append(": ")
            _python(value[key], out)
        out.append("}")
    else:
        raise _type_error(value)


def to_python(value: Value) -> bytes:
    """Render *value* as a Python literal, UTF-8 encoded, that ``ast.literal_eval`` reads back.

    Dict keys are sorted (byte-wise, as elsewhere); ``None``, ``True``, ``False``, integers and
    strings are written with ``repr()``, finite floats with ``repr()`` (which round-trips).
    There is no literal for infinity or NaN: positive and negative infinity are written
    ``1e999`` and ``-1e999``, which overflow to ``inf`` and ``-inf`` when read.

    Raises:
        ValueError: if the tree holds a NaN, which no literal can express.
        TypeError: if the tree holds a value that is not part of :data:`Value`.

    """
    out: list[str] = []
    _python(value, out)
    return "".join(out).encode("utf-8")
