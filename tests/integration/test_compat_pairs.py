"""The 14 request/response pairs captured from DBSlayer beta-18, replayed in strict mode.

Against MariaDB with the shared ``items`` and ``compat`` data, in the captured order (INSERT_ID
depends on it): same status, Content-Type and body bytes; pairs 13 and 14 depend on the
installation and the clock, so only their keys are compared.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from tests.conftest import Served, Start, mysql_connect

FIXTURE = Path(__file__).parent / "fixtures" / "compat_fixture.sql"
TEXT = "text/plain; charset=utf-8"

PAIRS: list[tuple[str, int, str, bytes]] = [
    (
        "/db?%7B%22SQL%22%3A%22SELECT%201%22%7D",
        200,
        TEXT,
        b'{"RESULT" : {"HEADER" : ["1"] , "ROWS" : [[1]] , "TYPES" : ["MYSQL_TYPE_LONG"]} , "SERVER" : "bench"}',
    ),
    (
        "/db?%7B%22SQL%22%3A%22SELECT%20%2A%20FROM%20items%20WHERE%20id%3D42%22%7D",
        200,
        TEXT,
        b'{"RESULT" : {"HEADER" : ["id" , "name" , "price" , "created"] , "ROWS" : [[42 , "item-000042" , 3325.99 , "2024-01-01 00:25:54"]] , "TYPES" : ["MYSQL_TYPE_LONG" , "MYSQL_TYPE_VAR_STRING" , "MYSQL_TYPE_NEWDECIMAL" , "MYSQL_TYPE_TIMESTAMP"]} , "SERVER" : "bench"}',
    ),
    (
        "/db?%7B%22SQL%22%3A%22SELECT%20id%20FROM%20items%20WHERE%20id%20%3C%200%22%7D",
        200,
        TEXT,
        b'{"RESULT" : {"HEADER" : ["id"] , "ROWS" : [] , "TYPES" : ["MYSQL_TYPE_LONG"]} , "SERVER" : "bench"}',
    ),
    (
        "/db?%7B%22SQL%22%3A%22SELECT%201%20AS%20a%3B%20SELECT%20%27x%27%20AS%20b%2C%20NULL%20AS%20c%22%7D",
        200,
        TEXT,
        b'{"RESULT" : [{"HEADER" : ["a"] , "ROWS" : [[1]] , "TYPES" : ["MYSQL_TYPE_LONG"]} , {"HEADER" : ["b" , "c"] , "ROWS" : [["x" , null]] , "TYPES" : ["MYSQL_TYPE_VAR_STRING" , "MYSQL_TYPE_NULL"]}] , "SERVER" : "bench"}',
    ),
    (
        "/db?%7B%22SQL%22%3A%22INSERT%20INTO%20compat%20%28vc%29%20VALUES%20%28%27new%27%29%22%7D",
        200,
        TEXT,
        b'{"RESULT" : {"AFFECTED_ROWS" : 1 , "INSERT_ID" : 3 , "SUCCESS" : true} , "SERVER" : "bench"}',
    ),
    (
        "/db?%7B%22SQL%22%3A%22SELECT%201%3B%20UPDATE%20compat%20SET%20tiny%3D6%20WHERE%20id%3D1%3B%20SELECT%202%22%7D",
        200,
        TEXT,
        b'{"RESULT" : [{"HEADER" : ["1"] , "ROWS" : [[1]] , "TYPES" : ["MYSQL_TYPE_LONG"]} , {"AFFECTED_ROWS" : 1 , "INSERT_ID" : 0 , "SUCCESS" : true} , {"HEADER" : ["2"] , "ROWS" : [[2]] , "TYPES" : ["MYSQL_TYPE_LONG"]}] , "SERVER" : "bench"}',
    ),
    (
        "/db?%7B%22SQL%22%3A%22SELECT%20%2A%20FROM%20nosuchtable%22%2C%22ROLLBACK_ON_ERROR%22%3Atrue%7D",
        200,
        TEXT,
        b'{"MYSQL_ERRNO" : 1146 , "MYSQL_ERROR" : "Table \'bench.nosuchtable\' doesn\'t exist" , "ROLLBACK_ON_ERROR" : true , "ROLLBACK_ON_ERROR_SUCCESS" : true , "SERVER" : "bench"}',
    ),
    (
        "/db?%7B%22SQL%22%3A%22SELECT%201%3B%20SELECT%20%2A%20FROM%20nosuchtable%3B%20SELECT%203%22%7D",
        200,
        TEXT,
        b'{"RESULT" : {"HEADER" : ["1"] , "ROWS" : [[1]] , "TYPES" : ["MYSQL_TYPE_LONG"]} , "SERVER" : "bench"}',
    ),
    (
        "/db?%7BSQL%3A%201%7D",
        200,
        TEXT,
        b'{"ERROR" : "we got problems -  couldn\'t parse your incoming json"}',
    ),
    ("/db?%7B%7D", 200, TEXT, b'{"ERROR" : "TRY {\\"SLAYER_HELP\\":true } "}'),
    (
        "/db?%7B%22STAT%22%3A%22true%22%7D",
        200,
        TEXT,
        b'{"ERROR" : "TRY {\\"SLAYER_HELP\\":true } "}',
    ),
    (
        "/dbform?SQL=SELECT+id%2Cname+FROM+items+WHERE+id%3D7",
        200,
        TEXT,
        b'{"RESULT" : {"HEADER" : ["id" , "name"] , "ROWS" : [[7 , "item-000007"]] , "TYPES" : ["MYSQL_TYPE_LONG" , "MYSQL_TYPE_VAR_STRING"]} , "SERVER" : "bench"}',
    ),
    (
        "/db?%7B%22SQL%22%3A%22SELECT%20id%20FROM%20items%20WHERE%20id%20%3C%200%22%2C%22FORMAT%22%3A%22xml%22%7D",
        200,
        "text/xml",
        b"<object><key>RESULT</key><value><object><key>HEADER</key><value><array><item>id</item></array></value><key>ROWS</key><value>[]</value><key>TYPES</key><value><array><item>MYSQL_TYPE_LONG</item></array></value></object></value><key>SERVER</key><value>bench</value></object>",
    ),
]

PAIR_12_ROW = [9007199254740992, 12.5, 'a\\/b \\"q\\"', "line1\\nline2", "null", "b", '"2024"']


def load_data(url: str) -> None:
    """Make sure the first 100 ``items`` rows of the shared generator exist; load ``compat`` fresh."""
    base = datetime(2024, 1, 1)
    rows = [
        (
            i,
            f"item-{i:06d}",
            f"{((i * 7919) % 999999 + 1) / 100:.2f}",
            (base + timedelta(seconds=i * 37)).strftime("%Y-%m-%d %H:%M:%S"),
        )
        for i in range(1, 101)
    ]

    async def load() -> None:
        conn = await mysql_connect(url)
        async with conn.cursor() as cur:
            # The benchmark's 100,000-row table holds the same rows: add to it, never drop it.
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, name VARCHAR(64),"
                " price DECIMAL(10,2), created TIMESTAMP NULL DEFAULT NULL) ENGINE=InnoDB"
            )
            await cur.executemany("INSERT IGNORE INTO items VALUES (%s, %s, %s, %s)", rows)
            for statement in FIXTURE.read_text().split(";\n"):
                body = "\n".join(
                    line for line in statement.splitlines() if not line.startswith("--")
                ).strip()
                if body:
                    await cur.execute(body)
        conn.close()

    asyncio.run(load())


@pytest.fixture
def strict_server(mysql_url: str, serve: Start) -> Served:
    """A strict-mode server named ``bench`` on MariaDB with fresh data."""
    assert urlsplit(mysql_url).path == "/bench", "the captured pairs name the database bench"
    load_data(mysql_url)
    return serve(["--db", f"bench={mysql_url}", "--compat", "strict"])


def test_captured_pairs_byte_for_byte(strict_server: Served) -> None:
    """Pairs 1-12 answer the same status, Content-Type and body bytes as beta-18."""
    for path, status, content_type, body in PAIRS:
        response = strict_server.get(path)
        assert (response.status_code, response.headers["content-type"], response.content) == (
            status,
            content_type,
            body,
        ), path
    response = strict_server.get(
        "/db?%7B%22SQL%22%3A%22SELECT%20%2A%20FROM%20compat%20WHERE%20id%3D1%22%7D"
    )
    row = response.content.split(b'"ROWS" : [[')[1].split(b"]]")[0].decode().split(" , ")
    assert row[1] == "9007199254740992" and row[2] == "12.5"
    assert row[8] == '"a\\/b \\"q\\""' and row[9] == '"line1\\nline2"'
    assert row[10] == "null" and row[11] == '"b"' and row[13] == '"2024"'
    types = orjson.loads(response.content)["RESULT"]["TYPES"]
    assert types[9:12] == ["MYSQL_TYPE_BLOB", "MYSQL_TYPE_TEXT", "MYSQL_TYPE_STRING"]


def test_info_flags_answer_the_same_keys(strict_server: Served) -> None:
    """Pair 13: the info flags answer the same keys and value types."""
    response = strict_server.get(
        "/db?%7B%22STAT%22%3Atrue%2C%22CLIENT_INFO%22%3Atrue%2C%22HOST_INFO%22%3Atrue%2C"
        "%22SERVER_VERSION%22%3Atrue%2C%22CLIENT_VERSION%22%3Atrue%2C%22SERVER_NAME%22%3Atrue%7D"
    )
    body = orjson.loads(response.content)
    assert sorted(body) == [
        "CLIENT_INFO",
        "CLIENT_VERSION",
        "HOST_INFO",
        "SERVER_NAME",
        "SERVER_VERSION",
        "STAT",
    ]
    assert body["SERVER_NAME"] == "bench" and body["HOST_INFO"] == "127.0.0.1 via TCP/IP"
    assert body["STAT"].startswith("Uptime: ") and "Threads: " in body["STAT"]
    assert body["SERVER_VERSION"] >= 100000
    assert b'"HOST_INFO" : "127.0.0.1 via TCP\\/IP"' in response.content


def test_not_found_and_stats(strict_server: Served) -> None:
    """Pair 14: 404 Not Found as plain text; /stats has the original's exact keys."""
    response = strict_server.get("/nope")
    assert (response.status_code, response.headers["content-type"], response.content) == (
        404,
        TEXT,
        b"Not Found",
    )
    stats = strict_server.get("/stats")
    assert stats.headers["content-type"] == TEXT
    body = orjson.loads(stats.content)
    assert list(body) == ["current_time", "hits", "slices", "start_time", "total_requests"]
    assert body["total_requests"] >= 2
    assert stats.content.startswith(b'{"current_time" : ')
