"""Tests for the XML, PHP and Python output forms."""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchbay.sql.forms import (
    PHP_CONTENT_TYPE,
    PYTHON_CONTENT_TYPE,
    XML_CONTENT_TYPE,
    Value,
    to_php,
    to_python,
    to_xml,
)

NON_ASCII = "Zürich — 東京 😀"

# ------------------------------------------------------------------------------ strategies


def _trees(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Value]:
    scalars: st.SearchStrategy[Value] = (
        st.none()
        | st.booleans()
        | ints
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text()
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=8), children, max_size=5)
        ),
        max_leaves=25,
    )


json_trees = _trees(st.integers())
php_trees = _trees(st.integers(min_value=-(2**63), max_value=2**63 - 1))


# ---------------------------------------------------------------------- service helper


def require_tool(name: str) -> str:
    """Return the path of the program *name*, or skip the test when it is not installed.

    With ``PATCHBAY_REQUIRE_SERVICES=1`` a missing program fails the test instead, so CI
    cannot pass by skipping.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    if os.environ.get("PATCHBAY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name!r} is not on PATH and PATCHBAY_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(f"{name!r} is not on PATH (set PATCHBAY_REQUIRE_SERVICES=1 to fail instead)")


def test_require_tool_skips_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing tool skips the test when services are not required."""
    monkeypatch.delenv("PATCHBAY_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not on PATH"):
        require_tool("patchbay-no-such-program")


def test_require_tool_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing tool fails the test when PATCHBAY_REQUIRE_SERVICES=1."""
    monkeypatch.setenv("PATCHBAY_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="PATCHBAY_REQUIRE_SERVICES=1"):
        require_tool("patchbay-no-such-program")


# ---------------------------------------------------------------------------------- XML


def test_content_types() -> None:
    """The content types are bytes and XML is exactly what DBSlayer sent."""
    assert XML_CONTENT_TYPE == b"text/xml"
    assert PHP_CONTENT_TYPE == b"text/plain; charset=utf-8"
    assert PYTHON_CONTENT_TYPE == b"text/plain; charset=utf-8"


def test_xml_matches_captured_dbslayer_response() -> None:
    """The XML form reproduces a response captured from DBSlayer beta-18 byte for byte."""
    value: Value = {
        "SERVER": "bench",
        "RESULT": {"TYPES": ["MYSQL_TYPE_LONG"], "ROWS": [], "HEADER": ["id"]},
    }
    assert to_xml(value) == (
        b"<object><key>RESULT</key><value><object><key>HEADER</key><value><array><item>id"
        b"</item></array></value><key>ROWS</key><value>[]</value><key>TYPES</key><value>"
        b"<array><item>MYSQL_TYPE_LONG</item></array></value></object></value><key>SERVER"
        b"</key><value>bench</value></object>"
    )


def test_xml_escapes_only_amp_lt_gt() -> None:
    """Strings and keys escape &, < and > and nothing else, not even quotes."""
    value: Value = {"a<&>b": "x & y <z> \"q\" 'r'"}
    assert to_xml(value) == (
        b"<object><key>a&lt;&amp;&gt;b</key><value>x &amp; y &lt;z&gt; \"q\" 'r'</value></object>"
    )
    assert to_xml("&amp;") == b"&amp;amp;"


def test_xml_scalars() -> None:
    """None, booleans and integers use DBSlayer's spellings; bool is not written as int."""
    assert to_xml(None) == b"null"
    assert to_xml(True) == b"true"
    assert to_xml(False) == b"false"
    assert to_xml(0) == b"0"
    assert to_xml(-42) == b"-42"
    assert to_xml(2**63 - 1) == b"9223372036854775807"
    assert to_xml([True, 1, False, 0]) == (
        b"<array><item>true</item><item>1</item><item>false</item><item>0</item></array>"
    )


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (12345678.9, b"1.23457e+07"),
        (12.5, b"12.5"),
        (3325.99, b"3325.99"),
        (1.0, b"1"),
        (0.0, b"0"),
        (-0.0, b"-0"),
        (0.1, b"0.1"),
        (0.0001, b"0.0001"),
        (0.00001, b"1e-05"),
        (123456.0, b"123456"),
        (1234567.0, b"1.23457e+06"),
        (-2.5e-300, b"-2.5e-300"),
        (math.inf, b"inf"),
        (-math.inf, b"-inf"),
        (math.nan, b"nan"),
    ],
)
def test_xml_floats_use_c_percent_g(number: float, expected: bytes) -> None:
    """Floats are written like C printf %g: six significant digits."""
    assert to_xml(number) == expected


def test_xml_empty_containers() -> None:
    """An empty array is the bare text [] and an empty object is <object></object>."""
    assert to_xml([]) == b"[]"
    assert to_xml({}) == b"<object></object>"
    assert to_xml({"a": [], "b": {}}) == (
        b"<object><key>a</key><value>[]</value><key>b</key><value><object></object></value>"
        b"</object>"
    )
    assert to_xml([[]]) == b"<array><item>[]</item></array>"


def test_xml_keys_sort_bytewise_and_encode_utf8() -> None:
    """Keys sort by their UTF-8 bytes (U+FFFF before U+1F600, unlike UTF-16) and text is UTF-8."""
    value: Value = {"😀": 1, "\uffff": 2, "é": 3, "Z": 4, "a": 5}
    assert (
        to_xml(value)
        == (
            "<object><key>Z</key><value>4</value><key>a</key><value>5</value>"
            "<key>é</key><value>3</value><key>\uffff</key><value>2</value>"
            "<key>😀</key><value>1</value></object>"
        ).encode()
    )
    assert to_xml(NON_ASCII) == NON_ASCII.encode("utf-8")


@given(st.lists(st.text(), unique=True))
def test_code_point_order_is_utf8_byte_order(keys: list[str]) -> None:
    """Sorting str by code point gives the byte-wise order of their UTF-8 encodings."""
    assert [k.encode("utf-8", "surrogatepass") for k in sorted(keys)] == sorted(
        k.encode("utf-8", "surrogatepass") for k in keys
    )


def test_unsupported_types_raise_type_error() -> None:
    """Values outside the Value tree are rejected by every form."""
    for write in (to_xml, to_php, to_python):
        with pytest.raises(TypeError, match="set"):
            write([{1, 2}])  # type: ignore[list-item]


def test_tuples_are_written_as_arrays() -> None:
    """Rows arrive from drivers as tuples and are written exactly like lists."""
    for write in (to_xml, to_php, to_python):
        assert write([(1, "a")]) == write([[1, "a"]])


# ---------------------------------------------------------------------------------- PHP


def test_php_scalars() -> None:
    """Each scalar type has its serialize() spelling; bool is not written as int."""
    assert to_php(None) == b"N;"
    assert to_php(True) == b"b:1;"
    assert to_php(False) == b"b:0;"
    assert to_php(0) == b"i:0;"
    assert to_php(-17) == b"i:-17;"
    assert to_php(2**63 - 1) == b"i:9223372036854775807;"
    assert to_php(-(2**63)) == b"i:-9223372036854775808;"
    assert to_php(2**64 - 1) == b"d:1.8446744073709552e+19;"
    assert to_php(1.5) == b"d:1.5;"
    assert to_php(1.0) == b"d:1.0;"
    assert to_php(0.1) == b"d:0.1;"
    assert to_php(1e25) == b"d:1e+25;"
    assert to_php(-0.0) == b"d:-0.0;"
    assert to_php(math.inf) == b"d:INF;"
    assert to_php(-math.inf) == b"d:-INF;"
    assert to_php(math.nan) == b"d:NAN;"


def test_php_strings_use_utf8_byte_length_and_raw_bytes() -> None:
    """String lengths count UTF-8 bytes and the content is not escaped."""
    assert to_php("") == b's:0:"";'
    assert to_php('a"b;\\') == b's:5:"a"b;\\";'
    raw = NON_ASCII.encode("utf-8")
    assert len(raw) == 23
    assert to_php(NON_ASCII) == b's:23:"' + raw + b'";'


def test_php_arrays() -> None:
    """Lists get index keys; dicts get sorted keys, integer-looking ones written as i:."""
    assert to_php([]) == b"a:0:{}"
    assert to_php({}) == b"a:0:{}"
    assert to_php(["a", None]) == b'a:2:{i:0;s:1:"a";i:1;N;}'
    assert to_php({"b": 1, "a": True}) == b'a:2:{s:1:"a";b:1;s:1:"b";i:1;}'
    assert to_php({"1": "x", "-5": "y", "0": "z"}) == (
        b'a:3:{i:-5;s:1:"y";i:0;s:1:"z";i:1;s:1:"x";}'
    )


@pytest.mark.parametrize(
    "key",
    ["01", "-0", "+1", " 1", "1 ", "1.0", "-", "", "9223372036854775808", "\u0661"],
)
def test_php_keys_php_keeps_as_strings(key: str) -> None:
    """Keys that PHP does not convert to integers stay strings."""
    raw = key.encode("utf-8")
    assert to_php({key: None}) == b'a:1:{s:%d:"%b";N;}' % (len(raw), raw)


def test_php_int_keys_at_the_64_bit_limits() -> None:
    """The extreme 64-bit integers are still integer keys in PHP."""
    assert to_php({"-9223372036854775808": 1}) == b"a:1:{i:-9223372036854775808;i:1;}"
    assert to_php({"9223372036854775807": 1}) == b"a:1:{i:9223372036854775807;i:1;}"


def test_php_nested_result() -> None:
    """A DBSlayer-style result nests arrays of rows inside sorted objects."""
    value: Value = {
        "RESULT": {"HEADER": ["id", "name"], "ROWS": [[1, "a"], [2, None]], "TYPES": []},
    }
    assert to_php(value) == (
        b'a:1:{s:6:"RESULT";a:3:{s:6:"HEADER";a:2:{i:0;s:2:"id";i:1;s:4:"name";}'
        b's:4:"ROWS";a:2:{i:0;a:2:{i:0;i:1;i:1;s:1:"a";}i:1;a:2:{i:0;i:2;i:1;N;}}'
        b's:5:"TYPES";a:0:{}}}'
    )


# Reads serialized data on stdin; prints json_encode() of it and, on a second line, PHP's own
# serialize() of it. Any warning or notice becomes an exception, so PHP exits non-zero.
PHP_READER = r"""
set_error_handler(function ($no, $msg) { throw new ErrorException($msg, 0, $no); });
$data = stream_get_contents(STDIN);
$value = unserialize($data);
if ($value === false && $data !== serialize(false)) {
    fwrite(STDERR, "unserialize failed\n");
    exit(3);
}
echo json_encode($value, JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION
    | JSON_THROW_ON_ERROR), "\n", serialize($value);
"""


def _run_php(php: str, code: str, data: bytes) -> bytes:
    result = subprocess.run(
        [php, "-d", "error_reporting=-1", "-d", "display_errors=stderr", "-r", code],
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stderr == b""
    return result.stdout


def _php_view(value: Value) -> Value:
    """Model PHP's unserialize(): a dict whose keys are 0..n-1 in order becomes a list."""
    if isinstance(value, list):
        return [_php_view(item) for item in value]
    if isinstance(value, dict):
        keys = sorted(value)
        if keys == [str(index) for index in range(len(keys))]:
            return [_php_view(value[key]) for key in keys]
        return {key: _php_view(value[key]) for key in keys}
    return value


def _canon(value: Any) -> Any:
    """Tag every node with its type so that 1 != 1.0 != True and dict order counts."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ["list", *(_canon(item) for item in value)]
    if isinstance(value, dict):
        return ["dict", *((key, _canon(item)) for key, item in value.items())]
    raise AssertionError(f"unexpected {type(value).__name__}")


def _has_float(value: Value) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    return False


def _check_php_reads_back(php: str, value: Value) -> None:
    serialized = to_php(value)
    encoded, _, reserialized = _run_php(php, PHP_READER, serialized).partition(b"\n")
    assert _canon(json.loads(encoded)) == _canon(_php_view(value))
    if not _has_float(value):
        # PHP writes floats its own way (d:1; for 1.0); everything else must be identical.
        assert reserialized == serialized


def test_php_unserialize_reads_rows_with_non_ascii_text() -> None:
    """Real PHP unserializes nested rows with non-ASCII text and integer-looking keys."""
    php = require_tool("php")
    value: Value = {
        "RESULT": {
            "HEADER": ["id", "city", "score", "ok"],
            "ROWS": [
                [1, NON_ASCII, 3325.99, True],
                [2, 'quote " semicolon ; brace }', -0.0, False],
                [3, "", 1e25, None],
                [2**63 - 1, "\x00nul", 12345678.9, None],
            ],
            "TYPES": ["MYSQL_TYPE_LONG", "MYSQL_TYPE_VAR_STRING", "MYSQL_TYPE_DOUBLE", []],
        },
        "SERVER": NON_ASCII,
        "keys": {"0": "zero", "1": "one", "01": "string", "-0": "string", "😀": {}},
    }
    _check_php_reads_back(php, value)
    _check_php_reads_back(php, {"2": "a", "0": "b", "1": "c"})
    _check_php_reads_back(php, [[], {}, [[NON_ASCII]]])


def test_php_unserialize_reads_non_finite_floats() -> None:
    """Real PHP reads INF, -INF and NAN back as the matching floats."""
    php = require_tool("php")
    code = "var_export(unserialize(stream_get_contents(STDIN)));"
    out = _run_php(php, code, to_php([math.inf, -math.inf, math.nan]))
    assert out == b"array (\n  0 => INF,\n  1 => -INF,\n  2 => NAN,\n)"


def test_php_unserialize_reads_any_tree() -> None:
    """Property: real PHP reads back whatever to_php writes, for any JSON-like tree."""
    php = require_tool("php")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(php_trees)
    def check(value: Value) -> None:
        _check_php_reads_back(php, value)

    check()


# ------------------------------------------------------------------------------- Python


def test_python_literal_reads_back() -> None:
    """The Python form of a nested result reads back equal with ast.literal_eval."""
    value: Value = {
        "SERVER": NON_ASCII,
        "RESULT": {"ROWS": [[1, 'it\'s "x"\n', 2.5, True, False, None]], "TYPES": []},
        "empty": {},
    }
    text = to_python(value)
    assert (
        text
        == (
            "{'RESULT': {'ROWS': [[1, 'it\\'s \"x\"\\n', 2.5, True, False, None]], 'TYPES': []}, "
            "'SERVER': 'Zürich — 東京 😀', 'empty': {}}"
        ).encode()
    )
    assert ast.literal_eval(text.decode("utf-8")) == value


def test_python_scalars() -> None:
    """Scalars use repr(); infinities use overflowing literals that read back as inf."""
    assert to_python(None) == b"None"
    assert to_python(True) == b"True"
    assert to_python(0) == b"0"
    assert to_python(-0.0) == b"-0.0"
    assert to_python(1e25) == b"1e+25"
    assert to_python(2**70) == b"1180591620717411303424"
    assert to_python([math.inf, -math.inf]) == b"[1e999, -1e999]"
    assert ast.literal_eval("[1e999, -1e999]") == [math.inf, -math.inf]


def test_python_nan_is_rejected() -> None:
    """NaN has no literal, so to_python raises ValueError."""
    with pytest.raises(ValueError, match="NaN"):
        to_python({"x": [math.nan]})


@given(json_trees)
def test_python_round_trips_any_tree(value: Value) -> None:
    """Property: ast.literal_eval(to_python(v)) == v, with types and key order preserved."""
    text = to_python(value).decode("utf-8")
    back = ast.literal_eval(text)
    assert _canon(back) == _canon(_sorted_dicts(value))


def _sorted_dicts(value: Value) -> Value:
    if isinstance(value, list):
        return [_sorted_dicts(item) for item in value]
    if isinstance(value, dict):
        return {key: _sorted_dicts(value[key]) for key in sorted(value)}
    return value
