"""MySQL pipelining against real MariaDB: separate answers, errors kept apart, timeouts, stats."""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import quote

import orjson

from patchbay.sql.backends.mysql import MySQLConnector
from patchbay.sql.results import Rows, Write
from patchbay.sql.statements import READ
from tests.conftest import Served, Start


def db(server: Served, sql: str) -> dict[str, Any]:
    """Run SQL through /db."""
    response = server.get("/db?" + quote(json.dumps({"SQL": sql})), timeout=15)
    assert response.status_code == 200
    answer: dict[str, Any] = orjson.loads(response.content)
    return answer


def in_threads(server: Served, sqls: list[str], gap: float = 0.0) -> list[dict[str, Any]]:
    """Send each SQL from its own thread, ``gap`` seconds apart; the answers in that order."""
    answers: list[dict[str, Any]] = [{} for _ in sqls]

    def one(i: int) -> None:
        answers[i] = db(server, sqls[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(sqls))]
    for thread in threads:
        thread.start()
        time.sleep(gap)
    for thread in threads:
        thread.join(20)
    return answers


def pipeline_stats(server: Served) -> dict[str, Any]:
    """The pipeline counters of database main's one server, from ``/v1/stats``."""
    stats = orjson.loads(server.get("/v1/stats").content)
    pipeline: dict[str, Any] = stats["databases"]["main"]["servers"][0]["pipeline"]
    return pipeline


async def test_pipelined_queries_keep_their_own_answers_and_errors(mysql_url: str) -> None:
    """Three queries written at once: each answer and error comes back to its own query."""
    connector = MySQLConnector(mysql_url, strict=False, connect_timeout=2)
    conn = await connector.connect()
    try:
        conn.send(["SELECT 1 AS a", "SELECT nope FROM dual", "SELECT 3 AS c; SELECT 4 AS d"])
        first, second, third = [await conn.receive() for _ in range(3)]
        assert isinstance(first.results[0], Rows) and list(first.results[0].rows) == [(1,)]
        assert second.results == [] and second.error is not None
        assert second.error.errno == 1054  # unknown column
        assert [list(r.rows) for r in third.results if isinstance(r, Rows)] == [[(3,)], [(4,)]]
        after = await conn.run("SELECT 5", rollback_on_error=False, shape=READ)
        assert isinstance(after.results[0], Rows) and list(after.results[0].rows) == [(5,)]
        conn.send(["DO 1"])
        assert isinstance((await conn.receive()).results[0], Write)
    finally:
        await conn.close()


def test_reads_waiting_for_a_busy_pool_share_a_connection(serve: Start, mysql_url: str) -> None:
    """With one connection held, eight reads go out in batches and each gets its own row."""
    server = serve(["--db", f"main={mysql_url}", "--pool-size", "1", "--pipeline-depth", "4"])
    sqls = ["SELECT SLEEP(0.5) AS s"] + [f"SELECT {i} AS n" for i in range(8)]
    answers = in_threads(server, sqls, gap=0.02)
    assert answers[0]["RESULT"]["ROWS"] == [[0]]
    assert [a["RESULT"]["ROWS"] for a in answers[1:]] == [[[i]] for i in range(8)]
    stats = pipeline_stats(server)
    assert stats["depth"] == 4 and stats["reads"] == 8
    assert 2 <= stats["batches"] <= 3  # at most four in a batch


def test_timeout_in_a_batch_kills_the_query_and_reruns_the_reads_behind(
    serve: Start, mysql_url: str
) -> None:
    """SLEEP(5) in a batch times out at 1 s and is killed; the reads behind it still answer."""
    server = serve(
        [
            "--db",
            f"main={mysql_url}",
            "--pool-size",
            "1",
            "--pipeline-depth",
            "4",
            "--query-timeout",
            "1",
        ]
    )
    sqls = ["SELECT SLEEP(0.3) AS s", "SELECT SLEEP(5)", "SELECT 7 AS n", "SELECT 8 AS n"]
    began = time.monotonic()
    answers = in_threads(server, sqls, gap=0.05)
    assert time.monotonic() - began < 4
    assert answers[0]["RESULT"]["ROWS"] == [[0]]
    assert str(answers[1]["ERROR"]).startswith("query_timeout: ")
    assert [a["RESULT"]["ROWS"] for a in answers[2:]] == [[[7]], [[8]]]
    assert pipeline_stats(server)["resent"] == 2
    processes = db(
        server,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(5)%'",
    )
    assert processes["RESULT"]["ROWS"] == [[0]]
