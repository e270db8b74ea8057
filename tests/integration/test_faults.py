"""Bad input and faults: each answered cleanly, and the server keeps serving after each."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from tests.conftest import Served, Start, free_port


def db(server: Served, sql: str) -> dict[str, object]:
    """Run SQL through /db."""
    response = server.get("/db?" + quote(json.dumps({"SQL": sql})))
    assert response.status_code == 200
    answer: dict[str, object] = orjson.loads(response.content)
    return answer


def still_serving(server: Served) -> None:
    """The server answers a query correctly."""
    assert db(server, "SELECT 1")["RESULT"]["ROWS"] == [[1]]  # type: ignore[index]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("%7B%22SQL%22%3A", "we got problems -  couldn't parse your incoming json"),
        ("%zz", "we got problems -  couldn't parse your incoming json"),
        ("%5B1%5D", "the top level JSON value must be an object"),
        ("%22SELECT%201%22", "the top level JSON value must be an object"),
        ("%7B%22NOPE%22%3A1%7D", 'TRY {"SLAYER_HELP":true } '),
        ("%7B%22SQL%22%3A%22%FF%22%7D", "we got problems -  couldn't parse your incoming json"),
        ("", "we got problems -  couldn't parse your incoming json"),
        (
            "%7B%22SQL%22%3A%22SELECT%201%22%2C%22SERVER%22%3A%22nope%22%7D",
            "unknown SERVER: no database of that name",
        ),
    ],
)
def test_bad_requests_get_dbslayer_errors(serve: Start, query: str, error: str) -> None:
    """Malformed input gets HTTP 200 with a clear ERROR, never a trace or a 500."""
    server = serve([])
    response = server.get("/db?" + query)
    assert response.status_code == 200
    assert orjson.loads(response.content)["ERROR"] == error
    still_serving(server)


def test_request_over_the_size_limit(serve: Start, tmp_path: Path) -> None:
    """A request over max_request_bytes is refused with a documented ERROR."""
    config = tmp_path / "p.toml"
    config.write_text("[server]\nmax_request_bytes = 1000\n")
    server = serve(["--config", str(config)])
    body = orjson.loads(
        server.get("/db?" + quote(json.dumps({"SQL": "SELECT '" + "x" * 2000 + "'"}))).content
    )
    assert body["ERROR"] == "request too large: over 1000 bytes"
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /db?" + b"x" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(100).startswith(b"HTTP/1.1 414")
    sock.close()
    still_serving(server)


def test_query_timeout_cancels_on_the_server(serve: Start, mysql_url: str) -> None:
    """SLEEP(5) times out at 1 s on a pool of one; the query is killed; SELECT 1 answers."""
    server = serve(["--db", f"main={mysql_url}", "--pool-size", "1", "--query-timeout", "1"])
    began = time.monotonic()
    answer = db(server, "SELECT SLEEP(5)")
    assert time.monotonic() - began < 3
    assert str(answer["ERROR"]).startswith("query_timeout: ")
    assert db(server, "SELECT 1")["RESULT"] == {
        "HEADER": ["1"],
        "ROWS": [[1]],
        "TYPES": ["MYSQL_TYPE_LONG"],
    }
    processes = db(
        server,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(5)%'",
    )
    assert processes["RESULT"]["ROWS"] == [[0]]  # type: ignore[index]


def test_postgres_query_timeout(serve: Start, postgres_url: str) -> None:
    """A PostgreSQL query past its timeout is ended and the pool recovers."""
    server = serve(["--db", f"pg={postgres_url}", "--pool-size", "1", "--query-timeout", "1"])
    assert str(db(server, "SELECT pg_sleep(5)")["ERROR"]).startswith("query_timeout: ")
    assert db(server, "SELECT 1 AS one")["RESULT"]["ROWS"] == [[1]]  # type: ignore[index]


def test_backend_down_and_every_backend_down(serve: Start, mysql_url: str) -> None:
    """A dead server is skipped; with every server dead the answer is a clean ERROR."""
    dead = f"mysql://root@127.0.0.1:{free_port()}/bench"
    server = serve(["--db", f"main={dead},{mysql_url}", "--db", f"gone={dead},{dead}"])
    for _ in range(3):
        assert db(server, "SELECT 1")["RESULT"]["ROWS"] == [[1]]  # type: ignore[index]
    response = server.get("/db?" + quote(json.dumps({"SQL": "SELECT 1", "SERVER": "gone"})))
    answer = orjson.loads(response.content)
    assert answer["ERROR"].startswith("backend_unavailable: ") and answer["SERVER"] == "gone"
    stats = orjson.loads(server.get("/v1/stats").content)
    main = stats["databases"]["main"]
    assert main["servers"][0]["up"] is False and main["servers"][1]["up"] is True
    assert main["requests"] >= 3 and main["latency"]["p50_ms"] > 0
    assert main["servers"][1]["pool"]["open"] >= 1
    still_serving(server)


def test_pool_exhausted(serve: Start, mysql_url: str, tmp_path: Path) -> None:
    """With the only connection busy, a request gives up after acquire_timeout."""
    config = tmp_path / "p.toml"
    config.write_text("[sql]\npool_size = 1\nacquire_timeout = 0.3\n")
    server = serve(["--db", f"main={mysql_url}", "--config", str(config)])
    slow = threading.Thread(target=db, args=(server, "SELECT SLEEP(2)"))
    slow.start()
    time.sleep(0.5)
    answer = db(server, "SELECT 1")
    slow.join()
    assert str(answer["ERROR"]).startswith("pool_exhausted: ")
    assert db(server, "SELECT 1")["RESULT"]["ROWS"] == [[1]]  # type: ignore[index]


def test_slow_client_is_cut_at_the_receive_deadline(serve: Start, tmp_path: Path) -> None:
    """A client that sends its request too slowly is disconnected; others are served."""
    config = tmp_path / "p.toml"
    config.write_text("[server]\nreceive_timeout = 1.0\n")
    server = serve(["--config", str(config)])
    idle = socket.create_connection(("127.0.0.1", server.port))
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET /db?%7B HTTP/1.1\r\nHost: x\r\n")
    began = time.monotonic()
    still_serving(server)
    for sock in (idle, slow):
        sock.settimeout(5)
        data = sock.recv(1000)
        assert b"200 OK" not in data
        sock.close()
    assert time.monotonic() - began < 4
    still_serving(server)


def test_two_thousand_connections_from_another_process(serve: Start) -> None:
    """2,000 concurrent connections from another process are all answered."""
    server = serve([])
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        REQ = b"GET /db?%7B%22SQL%22%3A%22SELECT%201%22%7D HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
        async def one():
            r, w = await asyncio.open_connection("127.0.0.1", {server.port})
            await asyncio.sleep(0.5)
            w.write(REQ)
            data = await asyncio.wait_for(r.readuntil(b'"SERVER":"demo"}}'), 30)
            w.close()
            return b'"ROWS":[[1]]' in data
        async def main():
            results = await asyncio.gather(*(one() for _ in range(2000)), return_exceptions=True)
            print(sum(r is True for r in results))
        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=50, text=True)
    assert out.stdout.strip() == "2000", out.stderr[-2000:]
    still_serving(server)


def test_shutdown_only_from_the_local_address(serve: Start) -> None:
    """/shutdown refuses another address and forwarded headers; from itself it stops all."""
    server = serve([])
    other = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.2", 0))
    other.sendall(b"GET /shutdown HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"403" in other.recv(1000).split(b"\r\n")[0]
    other.close()
    forwarded = server.get("/shutdown", headers={"X-Forwarded-For": "127.0.0.1"})
    assert forwarded.status_code == 200  # the peer really is 127.0.0.1 → allowed
    assert forwarded.text == "going down"
    server.proc.wait(15)
    assert server.proc.returncode == 0


def test_forwarded_headers_never_grant_shutdown(serve: Start) -> None:
    """A remote peer claiming to be local in headers is refused."""
    server = serve([])
    sock = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.3", 0))
    sock.sendall(
        b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"Forwarded: for=127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert b"403" in sock.recv(1000).split(b"\r\n")[0]
    sock.close()
    still_serving(server)


def test_refuses_to_listen_openly_without_allowlist_or_token(tmp_path: Path) -> None:
    """Listening beyond loopback needs --allow or --token."""
    out = subprocess.run(
        [sys.executable, "-m", "patchbay", "serve", "-h", "0.0.0.0", "-p", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "server.allow_networks" in out.stderr and "Traceback" not in out.stderr


def test_token_is_required_when_set(serve: Start) -> None:
    """With a token, SQL endpoints answer 401 without it and work with it."""
    server = serve(["--token", "s3cret"])
    assert server.get("/db?%7B%22SQL%22%3A%22SELECT%201%22%7D").status_code == 401
    ok = server.get(
        "/db?%7B%22SQL%22%3A%22SELECT%201%22%7D", headers={"Authorization": "Bearer s3cret"}
    )
    assert orjson.loads(ok.content)["RESULT"]["ROWS"] == [[1]]
    assert server.get("/livez").status_code == 200
    args = server.get("/stats/args", headers={"Authorization": "Bearer s3cret"})
    assert args.status_code == 200 and b"--token ***" in args.content
    assert b"s3cret" not in args.content


def test_shutdown_stops_every_worker(serve: Start) -> None:
    """With --workers 2, /shutdown from loopback stops the supervisor and both workers."""
    server = serve(["--workers", "2"])
    for _ in range(4):
        still_serving(server)
    assert server.get("/shutdown").text == "going down"
    server.proc.wait(20)
    with pytest.raises(OSError, match="refused"):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


def test_stats_count_every_worker(serve: Start) -> None:
    """With --workers 2, /stats, /stats/log and /stats/error count the whole server."""
    server = serve(["--workers", "2"])
    before = orjson.loads(server.get("/stats").content)["total_requests"]
    pids = set()
    for _ in range(20):
        still_serving(server)
        server.get("/db?%7B%7D")  # an error, for /stats/error
        pids.add(orjson.loads(server.get("/v1/stats").content)["pid"])
    assert len(pids) == 2, "the requests did not reach both workers"
    after = orjson.loads(server.get("/stats").content)["total_requests"]
    assert after - before == 61
    log = orjson.loads(server.get("/stats/log").content)
    assert len(log) == min(100, after + 1)  # everything before, the last /stats included
    assert log[-1]["request"] == "GET /stats HTTP/1.0"
    errors = orjson.loads(server.get("/stats/error").content)
    assert len(errors) == 20


def test_v1_stats_add_every_worker_up(serve: Start) -> None:
    """With --workers 2, /v1/stats counts every worker's queries, whichever worker answers."""
    server = serve(["--workers", "2"])
    for _ in range(30):
        still_serving(server)
    whole: dict[int, dict[str, Any]] = {}  # by the pid that answered
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(whole) < 2:  # snapshots are shared every second
        stats = orjson.loads(server.get("/v1/stats").content)
        if len(stats["workers"]) == 2 and stats["databases"]["demo"]["requests"] == 30:
            whole[stats["pid"]] = stats
        time.sleep(0.1)
    assert len(whole) == 2, "both workers did not answer with the whole server's count"
    for stats in whole.values():
        demo = stats["databases"]["demo"]
        assert sum(demo["latency"]["counts"]) == 30
        assert demo["servers"][0]["pool"]["size"] == 2 * 16
        assert {w["pid"] for w in stats["workers"]} == set(whole)


def test_sigterm_drains_in_flight_requests(serve: Start, mysql_url: str) -> None:
    """SIGTERM lets a running query finish and answer before the server exits."""
    server = serve(["--db", f"main={mysql_url}"])
    answers: list[dict[str, object]] = []
    slow = threading.Thread(target=lambda: answers.append(db(server, "SELECT SLEEP(1.5) AS s")))
    slow.start()
    time.sleep(0.5)
    server.proc.terminate()
    slow.join(10)
    assert answers and answers[0]["RESULT"]["ROWS"] == [[0]]  # type: ignore[index]
    server.proc.wait(10)


def test_sqlite_query_timeout_and_session_reset(serve: Start, tmp_path: Path) -> None:
    """A runaway SQLite query is interrupted; temp tables do not outlive their request."""
    import sqlite3

    path = tmp_path / "s.db"
    sqlite3.connect(path).close()
    server = serve(["--db", f"s=sqlite:///{path}", "--pool-size", "1", "--query-timeout", "1"])
    began = time.monotonic()
    runaway = db(
        server,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    )
    assert str(runaway["ERROR"]).startswith("query_timeout: ")
    assert time.monotonic() - began < 4
    still_serving(server)
    db(server, "CREATE TEMP TABLE scratch (a); INSERT INTO scratch VALUES (1)")
    assert db(server, "SELECT * FROM scratch")["MYSQL_ERRNO"] == 1146
