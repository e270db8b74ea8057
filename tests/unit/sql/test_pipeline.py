"""Reads sent together on a busy pool's next free connection: batches, order, give-ups, failures."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence

import pytest

from patchbay.errors import PoolExhausted
from patchbay.sql.backends.base import ServerFailure
from patchbay.sql.pipeline import MAX_SQL_CHARS, Pipeline, PipelinedConnection
from patchbay.sql.pool import Pool
from patchbay.sql.results import Outcome, Rows
from patchbay.sql.statements import Shape


class Conn:
    """A pipelining connection whose answers the test releases one by one when it wants."""

    def __init__(self, n: int, *, hold: bool = False) -> None:
        self.n = n
        self.sent: list[list[str]] = []
        self.queue: list[str] = []
        self.hold = hold  # receive waits for `go` before each answer
        self.go = asyncio.Event()
        self.fail_on: str | None = None
        self.aborted = self.closed = False

    def send(self, sqls: Sequence[str]) -> None:
        self.sent.append(list(sqls))
        self.queue.extend(sqls)

    async def receive(self) -> Outcome:
        sql = self.queue.pop(0)
        if self.hold:
            await self.go.wait()
            self.go.clear()
        if sql == self.fail_on:
            raise ServerFailure("link lost", sent=True)
        return Outcome([Rows(["sql", "conn"], ["MYSQL_TYPE_STRING"] * 2, [[sql, self.n]])])

    async def run(self, sql: str, *, rollback_on_error: bool, shape: Shape) -> Outcome:
        self.send([sql])
        return await self.receive()

    async def info(self, key: str) -> str:
        return key

    async def ping(self) -> None:
        """Always answers."""

    async def abort(self) -> None:
        self.aborted = True

    async def close(self) -> None:
        self.closed = True

    def alive(self) -> bool:
        return not (self.closed or self.aborted)


def answer(outcome: Outcome) -> tuple[str, int]:
    rows = outcome.results[0]
    assert isinstance(rows, Rows)
    sql, conn = rows.rows[0]
    return str(sql), int(conn)


def make(
    *, size: int = 1, depth: int = 8, timeout: float = 2.0, hold: bool = False
) -> tuple[Pipeline, Pool[PipelinedConnection], list[Conn]]:
    made: list[Conn] = []
    counter = itertools.count()

    async def connect() -> PipelinedConnection:
        conn = Conn(next(counter), hold=hold)
        made.append(conn)
        return conn

    async def close(conn: PipelinedConnection) -> None:
        await conn.close()

    pool: Pool[PipelinedConnection] = Pool(
        connect, close, size=size, acquire_timeout=timeout, alive=lambda c: c.alive()
    )
    return Pipeline(pool, depth), pool, made


def nothing() -> None:
    """A ``started`` callback that records nothing."""


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_waiting_reads_go_out_in_one_write_and_answer_in_order() -> None:
    """Reads that wait for a busy pool are written together and each gets its own answer."""
    pipeline, pool, made = make()
    assert not pipeline.wanted("SELECT 0")  # depth 8, but the pool has room
    held = await pool.acquire()
    assert pipeline.wanted("SELECT 0")
    assert not pipeline.wanted("x" * (MAX_SQL_CHARS + 1))  # may not fit one packet
    started: list[str] = []

    def start(sql: str) -> Callable[[], None]:
        return lambda: started.append(sql)

    reads = [
        asyncio.create_task(pipeline.run(f"SELECT {i}", start(f"SELECT {i}"))) for i in range(3)
    ]
    await settle()
    assert made[0].sent == [] and started == []  # still waiting for the pool
    pool.release(held)
    answers = [answer(outcome) for outcome in await asyncio.gather(*reads)]
    assert answers == [("SELECT 0", 0), ("SELECT 1", 0), ("SELECT 2", 0)]
    assert made[0].sent == [["SELECT 0", "SELECT 1", "SELECT 2"]]
    assert started == ["SELECT 0", "SELECT 1", "SELECT 2"]
    assert (pipeline.batches, pipeline.reads) == (1, 3)
    assert pool.in_use == 0  # the runner gave the connection back


async def test_no_batch_is_deeper_than_depth() -> None:
    """Five waiting reads at depth 2 go out as batches of two, two and one."""
    pipeline, pool, made = make(depth=2)
    held = await pool.acquire()
    reads = [asyncio.create_task(pipeline.run(f"q{i}", nothing)) for i in range(5)]
    await settle()
    pool.release(held)
    assert [answer(o)[0] for o in await asyncio.gather(*reads)] == [f"q{i}" for i in range(5)]
    assert made[0].sent == [["q0", "q1"], ["q2", "q3"], ["q4"]]


async def test_abandoned_read_being_answered_aborts_and_the_rest_are_sent_again() -> None:
    """A give-up on the read in progress kills it on the server; the reads behind it rerun."""
    pipeline, pool, made = make(hold=True)
    held = await pool.acquire()
    slow = asyncio.create_task(pipeline.run("slow", nothing))
    behind = [asyncio.create_task(pipeline.run(f"q{i}", nothing)) for i in range(2)]
    await settle()
    pool.release(held)
    await settle()
    assert made[0].sent == [["slow", "q0", "q1"]]
    slow.cancel()  # what the query-timeout watchdog does
    await settle()
    assert made[0].aborted
    assert len(made) == 2
    made[1].hold = False
    made[1].go.set()  # let the answer it may already be waiting for through
    answers = [answer(o) for o in await asyncio.wait_for(asyncio.gather(*behind), 2)]
    assert answers == [("q0", 1), ("q1", 1)]  # on a new connection
    assert made[1].sent == [["q0", "q1"]]
    assert pipeline.resent == 2
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_abandoned_read_not_yet_answered_is_skipped() -> None:
    """A read given up while an earlier one is answered is read off the wire and dropped."""
    pipeline, pool, made = make(hold=True)
    held = await pool.acquire()
    reads = [asyncio.create_task(pipeline.run(f"q{i}", nothing)) for i in range(3)]
    await settle()
    pool.release(held)
    await settle()
    reads[1].cancel()
    await settle()
    for _ in range(3):
        made[0].go.set()
        await settle()
    assert answer(await reads[0]) == ("q0", 0)
    assert answer(await reads[2]) == ("q2", 0)
    assert not made[0].aborted and pool.in_use == 0
    assert pipeline.reads == 2


async def test_broken_connection_fails_every_read_not_yet_answered() -> None:
    """A link failure mid-batch: earlier reads keep their answers, the rest get the failure."""
    pipeline, pool, made = make()
    pool.release(await pool.acquire())
    held = await pool.acquire()
    made[0].fail_on = "q1"
    reads = [asyncio.create_task(pipeline.run(f"q{i}", nothing)) for i in range(3)]
    await settle()
    pool.release(held)
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert isinstance(results[0], Outcome) and answer(results[0]) == ("q0", 0)
    assert all(isinstance(r, ServerFailure) and r.sent for r in results[1:])
    assert pool.open == 0  # the broken connection was discarded


async def test_reads_get_the_pool_error_when_no_connection_comes_free() -> None:
    """Past the acquire timeout the waiting reads get PoolExhausted, as a lone request would."""
    pipeline, pool, _ = make(timeout=0.05)
    await pool.acquire()
    results = await asyncio.gather(
        *(pipeline.run(f"q{i}", nothing) for i in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, PoolExhausted) for r in results)


async def test_close_cancels_waiting_reads_and_refuses_new_ones() -> None:
    """Closing stops the runners, cancels the reads still queued and refuses later ones."""
    pipeline, pool, _ = make()
    await pool.acquire()
    waiting = asyncio.create_task(pipeline.run("q", nothing))
    await settle()
    await pipeline.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not pipeline.runners
    with pytest.raises(ServerFailure):
        await pipeline.run("q", nothing)


async def test_depth_one_never_pipelines() -> None:
    """With depth 1 (the default) a read never joins, even on a busy pool."""
    pipeline, pool, _ = make(depth=1)
    await pool.acquire()
    assert not pipeline.wanted("SELECT 1")
