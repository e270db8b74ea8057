"""Reads that find every pooled connection busy, sent together on the next one to come free.

When the pool of a server is exhausted, a plain read (one that only reads and leaves no session
state) does not queue for a connection of its own: it joins a ``Pipeline``. A runner task waits
for a connection in the pool's queue, like any request, and then writes up to ``depth`` waiting
reads to it at once, one query each (MySQL pipelining: ``PipelinedConnection.send``). The server
runs them one after another, exactly as if each had waited for the one before on that
connection, and the runner reads their outcomes in order, handing each to its request as soon
as it arrives. Measured on MariaDB at 64 concurrent point lookups with 16 connections, this cut
the driver's CPU per query by a quarter to a third and MariaDB's by a fifth, since one write and
one wake-up now carry several queries; through the gateway, point lookups gained 8-15 %
throughput. But p99 grew 2-3x: the queue moves from the pool's first-come order into the
server's connection threads, which the kernel schedules unevenly. So it is off unless
``pipeline_depth`` is over 1 (``docs/benchmarks.md``).

What can go wrong, and what happens:

* A request gives up (its query timeout, its server marked down): if its outcome is the one
  being read, the server is still running its query, so the runner stops reading, ``abort``s the
  connection (killing the query on the server) and puts the reads sent after it back at the head
  of the queue. They only read, so running them again is safe. A request that gave up and is
  not being read is skipped.
* The connection fails: every read sent on it and not yet answered gets the ``ServerFailure``;
  the gateway then treats each as it treats a failed read (marks the server, moves the read).
* The runner cannot get a connection (``PoolExhausted``, a connect failure): the reads it would
  have taken get that error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from patchbay.sql.backends.base import Connection, ServerFailure
from patchbay.sql.pool import Pool
from patchbay.sql.results import Outcome

# A pipelined query must fit one protocol packet (16 MB), and a character takes up to 4 bytes.
MAX_SQL_CHARS: Final = 4_000_000


class PipelinedConnection(Connection, Protocol):
    """A connection that can have several queries on the wire at once."""

    def send(self, sqls: Sequence[str]) -> None:
        """Write the queries without waiting; the server runs them in order."""
        ...

    async def receive(self) -> Outcome:
        """Read the outcome of the oldest query sent and not read yet."""
        ...


@dataclass(frozen=True, slots=True)
class _Read:
    sql: str
    started: Callable[[], object]
    future: asyncio.Future[Outcome]


class Pipeline:
    """The reads waiting for one server's busy pool, and the runners that send them."""

    def __init__(self, pool: Pool[PipelinedConnection], depth: int) -> None:
        self.pool = pool
        self.depth = depth
        self.waiting: collections.deque[_Read] = collections.deque()
        self.runners: set[asyncio.Task[None]] = set()
        self._queued_runners = 0  # runners waiting in the pool's queue
        self._closed = False
        self.batches = 0  # batches written, for /v1/stats
        self.reads = 0  # reads answered through a batch
        self.resent = 0  # reads sent again after the read before them was abandoned

    def wanted(self, sql: str) -> bool:
        """Whether a read should join rather than wait for a connection of its own."""
        return self.depth > 1 and self.pool.busy and len(sql) <= MAX_SQL_CHARS

    async def run(self, sql: str, started: Callable[[], object]) -> Outcome:
        """Run one read through the pipeline; cancelling the caller abandons the read.

        ``started`` is called when the server starts on the read: when the reads sent before
        it on its connection are answered. Its query timeout counts from there.
        """
        if self._closed:
            raise ServerFailure("the database is closing", sent=False)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiting.append(_Read(sql, started, future))
        self._enough_runners()
        return await future

    def _enough_runners(self) -> None:
        while not self._closed and self._queued_runners * self.depth < len(self.waiting):
            self._queued_runners += 1
            task = asyncio.get_running_loop().create_task(self._runner())
            self.runners.add(task)
            task.add_done_callback(self.runners.discard)

    def _take(self) -> list[_Read]:
        batch: list[_Read] = []
        while self.waiting and len(batch) < self.depth:
            read = self.waiting.popleft()
            if not read.future.done():
                batch.append(read)
        return batch

    async def _runner(self) -> None:
        try:
            conn = await self.pool.acquire()
        except Exception as exc:
            self._queued_runners -= 1
            for read in self._take():
                read.future.set_exception(exc)
            return
        except BaseException:
            self._queued_runners -= 1
            raise
        self._queued_runners -= 1
        batch = self._take()
        if batch:
            await self._send(conn, batch)
        else:
            self.pool.release(conn)

    async def _send(self, conn: PipelinedConnection, batch: list[_Read]) -> None:
        runner = asyncio.current_task()
        assert runner is not None
        reading: _Read | None = None

        def abandoned(future: asyncio.Future[Outcome]) -> None:
            if future.cancelled() and reading is not None and future is reading.future:
                runner.cancel()

        for read in batch:
            read.future.add_done_callback(abandoned)
        self.batches += 1
        answered = 0
        try:
            conn.send([read.sql for read in batch])
            for read in batch:
                reading = read
                if not read.future.done():  # one given up is still read off the wire
                    read.started()
                outcome = await conn.receive()
                reading = None
                answered += 1
                if not read.future.done():
                    read.future.set_result(outcome)
                    self.reads += 1
        except asyncio.CancelledError:
            # The read being received was abandoned while the server runs it: stop it there.
            self.pool.forget(conn)
            self._resend(batch[answered + 1 :])
            with contextlib.suppress(Exception):
                await conn.abort()
            if self._closed or reading is None or not reading.future.cancelled():
                raise  # cancelled from outside (shutting down), not by an abandoned read
            return
        except Exception as exc:
            self.pool.discard(conn)
            for read in batch[answered:]:
                if not read.future.done():
                    read.future.set_exception(exc)
            return
        finally:
            for read in batch:
                read.future.remove_done_callback(abandoned)
        self.pool.release(conn)

    def _resend(self, reads: list[_Read]) -> None:
        live = [read for read in reads if not read.future.done()]
        self.resent += len(live)
        self.waiting.extendleft(reversed(live))
        if live:
            self._enough_runners()

    async def close(self) -> None:
        """Stop the runners; reads still waiting are cancelled."""
        self._closed = True
        for task in list(self.runners):
            task.cancel()
        for task in list(self.runners):
            with contextlib.suppress(BaseException):
                await task
        while self.waiting:
            self.waiting.popleft().future.cancel()
