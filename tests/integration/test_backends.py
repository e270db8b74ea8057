"""The gateway on real SQLite, MariaDB and PostgreSQL, in the default mode."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from tests.conftest import REQUIRE, Served, Start


def db(server: Served, sql: str, **extra: Any) -> dict[str, Any]:
    """Run SQL through /db and return the decoded answer."""
    command = json.dumps({"SQL": sql, **extra})
    response = server.get("/db?" + quote(command))
    assert response.status_code == 200
    result: dict[str, Any] = orjson.loads(response.content)
    return result


def test_demo_database_serves_out_of_the_box(serve: Start) -> None:
    """With no --db, the demo SQLite database is created and served as 'demo'."""
    server = serve([])
    answer = db(server, "SELECT id, name FROM items WHERE id = 42")
    assert answer == {
        "RESULT": {
            "HEADER": ["id", "name"],
            "ROWS": [[42, "item-000042"]],
            "TYPES": ["MYSQL_TYPE_LONGLONG", "MYSQL_TYPE_VAR_STRING"],
        },
        "SERVER": "demo",
    }


def test_sqlite_batches_writes_errors_and_blobs(serve: Start, tmp_path: Any) -> None:
    """SQLite runs batches in order, reports writes, maps errors, base64-encodes blobs."""
    path = tmp_path / "t.db"
    import sqlite3

    sqlite3.connect(path).close()
    server = serve(["--db", f"t=sqlite:///{path}"])
    answer = db(
        server,
        "CREATE TABLE t (a INTEGER PRIMARY KEY, b BLOB, c TEXT); "
        "INSERT INTO t (b, c) VALUES (x'0001', 'x;y'); SELECT * FROM t",
    )
    assert answer["RESULT"][1] == {"AFFECTED_ROWS": 1, "INSERT_ID": 1, "SUCCESS": True}
    assert answer["RESULT"][2]["ROWS"] == [[1, "AAE=", "x;y"]]
    assert answer["RESULT"][2]["TYPES"][1] == "MYSQL_TYPE_BLOB"
    missing = db(server, "SELECT * FROM nosuch")
    assert missing["MYSQL_ERRNO"] == 1146 and "no such table" in missing["MYSQL_ERROR"]
    later = db(server, "SELECT 1; SELECT * FROM nosuch")
    assert later["RESULT"]["ROWS"] == [[1]] and later["SUCCESS"] is False


def test_mysql_default_mode_keeps_every_digit(serve: Start, mysql_url: str) -> None:
    """BIGINT is exact, DECIMAL a number only when exact, binary BLOBs base64."""
    server = serve(["--db", f"main={mysql_url}"])
    answer = db(
        server,
        "SELECT CAST(9007199254740993 AS SIGNED) AS big, CAST(12.50 AS DECIMAL(10,2)) AS d,"
        " CAST('12345678901234567.89' AS DECIMAL(30,2)) AS wide, UNHEX('0001') AS bin,"
        " 'Zürich' AS t",
    )
    assert answer["RESULT"]["ROWS"] == [
        [9007199254740993, 12.5, "12345678901234567.89", "AAE=", "Zürich"]
    ]
    assert answer["SERVER"] == "main"


def test_mysql_session_state_never_leaks(serve: Start, mysql_url: str) -> None:
    """USE, SET and variables are reset before the connection serves the next request."""
    server = serve(["--db", f"main={mysql_url}", "--pool-size", "1"])
    db(server, "SET @leak = 5; SET SESSION sql_mode = 'ANSI'; USE mysql")
    answer = db(server, "SELECT @leak, DATABASE(), @@SESSION.sql_mode = 'ANSI'")
    assert answer["RESULT"]["ROWS"][0][0] is None
    assert answer["RESULT"]["ROWS"][0][1] == mysql_url.rsplit("/", 1)[1]
    assert answer["RESULT"]["ROWS"][0][2] == 0
    begin = db(server, "BEGIN; SELECT 1")
    assert "RESULT" in begin
    assert db(server, "SELECT @@in_transaction")["RESULT"]["ROWS"] == [[0]]


def test_mysql_later_error_reported_beside_results(serve: Start, mysql_url: str) -> None:
    """An error after the first statement is reported with the partial RESULT."""
    server = serve(["--db", f"main={mysql_url}"])
    answer = db(server, "SELECT 1; SELECT * FROM nosuchtable; SELECT 3")
    assert answer["RESULT"]["ROWS"] == [[1]]
    assert answer["MYSQL_ERRNO"] == 1146 and answer["SUCCESS"] is False


def test_postgres_types_batches_and_errors(serve: Start, postgres_url: str) -> None:
    """PostgreSQL columns get MySQL type names; batches, errors and transactions work."""
    server = serve(["--db", f"pg={postgres_url}"])
    answer = db(
        server,
        "SELECT 1::int4 AS a, 9007199254740993::int8 AS b, 12.50::numeric AS c,"
        " 'x'::text AS d, true AS e, '\\x0001'::bytea AS f, NULL AS g,"
        " '2024-01-01 00:00:37'::timestamp AS h; SELECT 2 AS z",
    )
    first = answer["RESULT"][0]
    assert first["ROWS"] == [
        [1, 9007199254740993, 12.5, "x", 1, "AAE=", None, "2024-01-01 00:00:37"]
    ]
    assert first["TYPES"] == [
        "MYSQL_TYPE_LONG",
        "MYSQL_TYPE_LONGLONG",
        "MYSQL_TYPE_NEWDECIMAL",
        "MYSQL_TYPE_VAR_STRING",
        "MYSQL_TYPE_TINY",
        "MYSQL_TYPE_BLOB",
        "MYSQL_TYPE_VAR_STRING",
        "MYSQL_TYPE_DATETIME",
    ]
    assert answer["RESULT"][1]["ROWS"] == [[2]]
    missing = db(server, "SELECT * FROM nosuchtable")
    assert missing["MYSQL_ERRNO"] == 1146
    tx = db(
        server,
        "CREATE TEMP TABLE tt (a int); BEGIN; INSERT INTO tt VALUES (1), (2); "
        "SELECT count(*) FROM tt; ROLLBACK",
    )
    assert tx["RESULT"][2] == {"AFFECTED_ROWS": 2, "INSERT_ID": 0, "SUCCESS": True}
    assert tx["RESULT"][3]["ROWS"] == [[2]]
    assert "MYSQL_ERROR" in db(server, "SELECT * FROM tt")


def test_php_form_reads_back_in_php(serve: Start) -> None:
    """PHP's own unserialize reads the php form, non-ASCII text included."""
    if shutil.which("php") is None:
        if REQUIRE:
            pytest.fail("php is not installed (PATCHBAY_REQUIRE_SERVICES=1)")
        pytest.skip("php is not installed")
    server = serve([])
    command = json.dumps({"SQL": "SELECT 'Zürich — 東京' AS city, 1.5 AS n", "FORMAT": "php"})
    body = server.get("/db?" + quote(command)).content
    out = subprocess.run(
        [
            "php",
            "-r",
            "echo json_encode(unserialize(stream_get_contents(STDIN)), JSON_UNESCAPED_UNICODE);",
        ],
        input=body,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert orjson.loads(out)["RESULT"]["ROWS"] == [["Zürich — 東京", 1.5]]


def test_python_form_reads_back_with_literal_eval(serve: Start) -> None:
    """The python form is a literal that ast.literal_eval reads."""
    import ast

    server = serve([])
    command = json.dumps({"SQL": "SELECT 'é' AS a", "FORMAT": "python"})
    value = ast.literal_eval(server.get("/db?" + quote(command)).text)
    assert value["RESULT"]["ROWS"] == [["é"]]


def test_sqlite_long_read_moves_off_the_event_loop(serve: Start) -> None:
    """A read too long to run inline is interrupted and run again on a thread, correctly."""
    server = serve([])
    answer = db(
        server,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)"
        " SELECT count(*), sum(x) FROM c",
    )
    assert answer["RESULT"]["ROWS"] == [[300000, 45000150000]]


def test_flags_alone_and_beside_sql(serve: Start) -> None:
    """A lone info flag answers; flags beside SQL answer with the result; help and echo work."""
    server = serve([])
    assert db_raw(server, {"SERVER_NAME": True}) == {"SERVER_NAME": "demo"}
    both = db_raw(server, {"SQL": "SELECT 1 AS a", "SERVER_NAME": True, "SLAYER_HELP": True})
    assert both["SERVER_NAME"] == "demo" and both["RESULT"]["ROWS"] == [[1]]
    assert "SQL" in both["SLAYER_HELP"]
    echo = db_raw(server, {"SLAYER_DEBUG_RETURN_INPUT": True, "X": 1})
    assert echo == {"SLAYER_DEBUG_RETURN_INPUT": {"SLAYER_DEBUG_RETURN_INPUT": True, "X": 1}}


def db_raw(server: Served, command: dict[str, Any]) -> dict[str, Any]:
    """Send a whole command object to /db."""
    result: dict[str, Any] = orjson.loads(server.get("/db?" + quote(json.dumps(command))).content)
    return result
