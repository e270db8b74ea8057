"""DBSlayer's wire format: request decoding and byte-exact response encoding."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchbay.sql import wire
from patchbay.sql.results import Outcome, Rows, SqlError, Write

LIMIT = 1_048_576


def decode(query: bytes) -> dict[str, Any]:
    return wire.decode_db(query, limit=LIMIT)


def test_decodes_percent_encoded_json() -> None:
    """A percent-encoded object decodes to the command."""
    assert decode(b"%7B%22SQL%22%3A%22SELECT%201%22%7D") == {"SQL": "SELECT 1"}


def test_plus_decodes_to_space() -> None:
    """``+`` is a space, as beta-18 decodes it and its clients rely on."""
    assert decode(b"%7B%22SQL%22%3A%22SELECT+1%2B1%22%7D") == {"SQL": "SELECT 1+1"}


def test_raw_json_is_accepted() -> None:
    """JSON sent without percent-encoding works, as with the original."""
    assert decode(b'{"SQL":"SELECT%202"}') == {"SQL": "SELECT 2"}


@pytest.mark.parametrize(
    "query",
    [b"", b"%7BSQL%3A%201%7D", b"%zz", b"%7B%22SQL%22%3A%22%FF%22%7D", b"{", b"NaN", b"%7"],
)
def test_undecodable_input_gets_the_parse_error(query: bytes) -> None:
    """Malformed JSON, percent-encoding or UTF-8 all answer DBSlayer's parse error."""
    with pytest.raises(wire.WireError) as caught:
        decode(query)
    assert caught.value.message == wire.PARSE_ERROR


def reference_unquote(raw: bytes) -> bytes | None:
    """Percent-decoding as RFC 3986 says, byte by byte; None for a malformed escape."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"%":
            pair = raw[i + 1 : i + 3]
            if len(pair) < 2 or any(c not in b"0123456789abcdefABCDEF" for c in pair):
                return None
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


@given(
    st.lists(
        st.sampled_from([b"%", b"\\", b"x", b"\\x", b"4", b"1", b"g", b"F", b"%25", b"%5C", b"a"])
        | st.binary(max_size=4),
        max_size=30,
    ).map(b"".join)
)
def test_unquote_matches_a_reference_decoder(raw: bytes) -> None:
    """The C percent-decoder decodes and refuses exactly as a byte-by-byte reference does."""
    expected = reference_unquote(raw)
    if expected is None:
        with pytest.raises(wire.WireError):
            wire._unquote(raw)
    else:
        assert wire._unquote(raw) == expected


def test_unquote_keeps_backslashes_and_escaped_percent() -> None:
    """Literal backslash escapes pass through as text; ``%25`` and ``%5C`` decode to one byte."""
    assert wire._unquote(b"\\x41\\n%5Cx41%25") == b"\\x41\\n\\x41%"
    command = decode(b"%7B%22SQL%22%3A%22SELECT%20%27a%5C%5Cb%27%22%7D")
    assert command == {"SQL": "SELECT 'a\\b'"}


@pytest.mark.parametrize("query", [b"%5B1%2C2%5D", b"%22SELECT%201%22", b"1", b"null"])
def test_top_level_non_object_is_an_error(query: bytes) -> None:
    """A top-level array or string gets an ERROR instead of beta-18's crash."""
    with pytest.raises(wire.WireError) as caught:
        decode(query)
    assert caught.value.message == wire.NOT_OBJECT


def test_request_over_the_limit_is_refused() -> None:
    """A query string over the limit is refused before any decoding."""
    with pytest.raises(wire.WireError) as caught:
        wire.decode_db(b"x" * 101, limit=100)
    assert caught.value.message.startswith("request too large")


def test_deep_nesting_is_a_clean_error() -> None:
    """A JSON bomb of nested arrays is refused cleanly."""
    with pytest.raises(wire.WireError):
        decode(b"[" * 100_000 + b"]" * 100_000)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_give_a_clean_error(query: bytes) -> None:
    """Whatever arrives, decoding returns a command object or raises WireError."""
    error: wire.WireError | None = None
    try:
        command = decode(query)
    except wire.WireError as exc:
        error = exc
    if error is not None:
        assert error.body()["ERROR"]
    else:
        assert isinstance(command, dict)


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5))
def test_form_fields_become_string_members(fields: dict[str, str]) -> None:
    """Every /dbform field becomes a string member of the command object."""
    from urllib.parse import urlencode

    assert wire.decode_form(urlencode(fields).encode(), limit=LIMIT) == fields


def test_flags_count_only_json_true() -> None:
    """Only JSON ``true`` sets a flag; the string "true" does not."""
    assert wire.flag({"STAT": True}, "STAT")
    assert not wire.flag({"STAT": "true"}, "STAT")
    assert not wire.has_action({"STAT": "true"})
    assert wire.has_action({"SQL": "SELECT 1"})
    assert not wire.has_action({"SQL": 1})


def test_strict_encoder_matches_beta18_bytes() -> None:
    """Sorted keys, ' : ' and ' , ', escaped slashes, %.16g numbers."""
    value = {
        "SERVER": "bench",
        "RESULT": {
            "TYPES": ["MYSQL_TYPE_LONG"],
            "HEADER": ["id", "a/b"],
            "ROWS": [[42, 3325.99, 9007199254740993.0, 'q"\n', None, True, []]],
        },
    }
    assert wire.encode_strict(value) == (
        b'{"RESULT" : {"HEADER" : ["id" , "a\\/b"] , "ROWS" : [[42 , 3325.99 , '
        b'9007199254740992 , "q\\"\\n" , null , true , []]] , "TYPES" : ["MYSQL_TYPE_LONG"]}'
        b' , "SERVER" : "bench"}'
    )


def test_strict_encoder_passes_other_control_characters_raw() -> None:
    """beta-18 escapes only its eight characters; others pass through unescaped."""
    assert wire.encode_strict(["\x01é"]) == '["\x01é"]'.encode()


def test_default_encoder_is_compact_sorted_json() -> None:
    """The default mode writes compact JSON that keeps big integers exact."""
    body = wire.encode_default({"b": 9007199254740993, "a": "x/y"})
    assert body == b'{"a":"x/y","b":9007199254740993}'


def rows(*values: Any) -> Rows:
    return Rows(["c"], ["MYSQL_TYPE_LONG"], [list(values)])


def test_one_result_is_an_object_several_a_list() -> None:
    """RESULT is the result itself for one statement and a list for several."""
    one = wire.outcome_fields(Outcome([rows(1)]), strict=True)
    assert one["RESULT"] == {"HEADER": ["c"], "ROWS": [[1]], "TYPES": ["MYSQL_TYPE_LONG"]}
    two = wire.outcome_fields(Outcome([rows(1), Write(1, 3)]), strict=True)
    assert two["RESULT"][1] == {"AFFECTED_ROWS": 1, "INSERT_ID": 3, "SUCCESS": True}


def test_later_error_is_dropped_in_strict_and_reported_by_default() -> None:
    """beta-18 loses an error after the first statement; the default mode reports it."""
    outcome = Outcome([rows(1)], SqlError(1146, "no table"), None)
    assert "MYSQL_ERROR" not in wire.outcome_fields(outcome, strict=True)
    fields = wire.outcome_fields(outcome, strict=False)
    assert fields["MYSQL_ERRNO"] == 1146
    assert fields["SUCCESS"] is False
    assert "RESULT" in fields


def test_first_error_reports_rollback_keys() -> None:
    """An error with ROLLBACK_ON_ERROR reports whether the rollback worked."""
    outcome = Outcome([], SqlError(1146, "no table"), True)
    assert wire.outcome_fields(outcome, strict=True) == {
        "MYSQL_ERRNO": 1146,
        "MYSQL_ERROR": "no table",
        "ROLLBACK_ON_ERROR": True,
        "ROLLBACK_ON_ERROR_SUCCESS": True,
    }


def test_encode_picks_the_requested_form() -> None:
    """FORMAT selects xml, php or python; anything else is JSON."""
    assert wire.encode({"A": []}, "xml", strict=False) == (
        b"<object><key>A</key><value>[]</value></object>",
        b"text/xml",
    )
    assert wire.encode({"A": 1}, "php", strict=False)[0] == b'a:1:{s:1:"A";i:1;}'
    assert wire.encode({"A": 1}, "python", strict=False)[0] == b"{'A': 1}"
    body, content_type = wire.encode({"A": 1}, "yaml", strict=False)
    assert orjson.loads(body) == {"A": 1}
    assert content_type == wire.JSON_CONTENT_TYPE


def test_unknown_keys_are_ignored() -> None:
    """Unknown keys neither fail a request nor count as an action, as in beta-18."""
    command = decode(b'{"SQL":"SELECT 1","COLOR":"blue"}')
    assert wire.has_action(command) and wire.sql_of(command) == "SELECT 1"
    assert not wire.has_action(decode(b'{"COLOR":"blue"}'))
