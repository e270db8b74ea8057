"""The gateway's failover logic against fake servers: no sockets, no database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from patchbay.errors import BackendUnavailable, QueryTimeout
from patchbay.settings import DatabaseSettings, PoolSettings
from patchbay.sql import gateway
from patchbay.sql.backends.base import ServerFailure
from patchbay.sql.results import Outcome, Rows
from patchbay.sql.statements import Shape


class FakeServer:
    """A server whose behaviour the test switches: ok, refuse, fail mid-query, hang."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.queries: list[str] = []
        self.aborted = 0


class FakeConnection:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.open = True

    async def run(self, sql: str, *, rollback_on_error: bool, shape: Shape) -> Outcome:
        self.server.queries.append(sql)
        if self.server.mode == "fail":
            raise ServerFailure("connection reset", sent=True)
        if self.server.mode == "hang":
            await asyncio.sleep(3600)
        return Outcome([Rows(["s"], ["MYSQL_TYPE_VAR_STRING"], [(self.server.name,)])])

    async def info(self, key: str) -> Any:
        return self.server.name

    async def ping(self) -> None:
        if self.server.mode != "ok":
            raise ServerFailure("ping failed", sent=True)

    def alive(self) -> bool:
        return self.open

    async def close(self) -> None:
        self.open = False

    async def abort(self) -> None:
        self.server.aborted += 1
        self.open = False


class FakeConnector:
    kind = "mysql"

    def __init__(self, url: str, servers: dict[str, FakeServer]) -> None:
        self.url = url
        self.server = servers[url]

    async def connect(self) -> FakeConnection:
        if self.server.mode == "refuse":
            raise ServerFailure("connection refused", sent=False)
        return FakeConnection(self.server)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeServer]:
    """Two fake servers, a and b, that make_connector hands out."""
    fakes = {"mysql://a/x": FakeServer("a"), "mysql://b/x": FakeServer("b")}
    monkeypatch.setattr(gateway, "make_connector", lambda url, **_: FakeConnector(url, fakes))
    return fakes


def database(**pool: Any) -> gateway.Database:
    settings = DatabaseSettings(
        "db",
        ("mysql://a/x", "mysql://b/x"),
        PoolSettings(**{"pool_size": 2, "probe_interval": 0.05, "connect_timeout": 0.2, **pool}),
    )
    return gateway.Database(settings, strict=False)


def served_by(outcome: Outcome) -> str:
    rows = outcome.results[0]
    assert isinstance(rows, Rows)
    return str(rows.rows[0][0])


async def test_reads_rotate_and_move_off_a_refusing_server(servers: dict[str, FakeServer]) -> None:
    """Reads are spread; a server that refuses is marked down and its reads go elsewhere."""
    db = database()
    assert {served_by(await db.execute("SELECT 1")) for _ in range(4)} == {"a", "b"}
    servers["mysql://a/x"].mode = "refuse"
    await db.servers[0].pool.clear()
    assert [served_by(await db.execute("SELECT 1")) for _ in range(4)] == ["b"] * 4
    assert not db.balancer.is_up(0)


async def test_a_read_that_failed_mid_query_is_retried_a_write_is_not(
    servers: dict[str, FakeServer],
) -> None:
    """After SQL reached a failing server, only a read may move to another one."""
    db = database(writes="first")
    servers["mysql://a/x"].mode = "fail"
    assert served_by(await db.execute("SELECT 1")) in ("a", "b")
    db.balancer.succeeded(0, 0.0)
    with pytest.raises(BackendUnavailable, match="may have been applied"):
        await db.execute("UPDATE t SET a = 1")
    assert servers["mysql://b/x"].queries.count("UPDATE t SET a = 1") == 0


async def test_probe_brings_a_server_back(servers: dict[str, FakeServer]) -> None:
    """The background probe marks a recovered server up again."""
    db = database()
    db.start()
    servers["mysql://a/x"].mode = "refuse"
    await asyncio.sleep(0.2)
    assert not db.balancer.is_up(0)
    servers["mysql://a/x"].mode = "ok"
    await asyncio.sleep(0.2)
    assert db.balancer.is_up(0)
    await db.close()


async def test_a_late_failure_from_before_recovery_does_not_mark_down_again(
    servers: dict[str, FakeServer],
) -> None:
    """A failure reported by a request that began before the server went down is not counted."""
    db = database()
    server = db.servers[0]
    generation = server.generation
    db._server_failed(server, ServerFailure("reset", sent=True), generation)
    assert not db.balancer.is_up(0)
    db.balancer.succeeded(0, 1.0)  # the probe found it back
    db._server_failed(server, ServerFailure("late", sent=True), generation)
    assert db.balancer.is_up(0)


async def test_running_and_waiting_reads_move_when_their_server_goes_down(
    servers: dict[str, FakeServer],
) -> None:
    """Reads running on, or queued for, a server marked down are moved to another server."""
    db = database(pool_size=1, acquire_timeout=5)
    servers["mysql://a/x"].mode = "hang"
    running = asyncio.create_task(db.execute("SELECT 1"))  # a: holds a's only connection
    await asyncio.sleep(0.01)
    assert served_by(await db.execute("SELECT 2")) == "b"
    queued = asyncio.create_task(db.execute("SELECT 3"))  # a again: waits for the pool
    await asyncio.sleep(0.01)
    assert db.servers[0].pool.waiting == 1
    db._server_failed(db.servers[0], ServerFailure("black hole", sent=True))
    done = await asyncio.wait_for(asyncio.gather(running, queued), 1)
    assert [served_by(o) for o in done] == ["b", "b"]
    assert db.retries == 2


async def test_query_timeout_aborts_on_the_server(servers: dict[str, FakeServer]) -> None:
    """A query past query_timeout is aborted, its slot freed, and QueryTimeout raised."""
    db = database(query_timeout=0.1, pool_size=1)
    db.start()
    servers["mysql://a/x"].mode = servers["mysql://b/x"].mode = "hang"
    with pytest.raises(QueryTimeout):
        await db.execute("SELECT SLEEP(5)")
    assert servers["mysql://a/x"].aborted + servers["mysql://b/x"].aborted == 1
    assert sum(s.pool.open for s in db.servers) == 0
    servers["mysql://a/x"].mode = servers["mysql://b/x"].mode = "ok"
    assert served_by(await db.execute("SELECT 1")) in ("a", "b")
    await db.close()
