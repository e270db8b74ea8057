"""The job store in one SQLite file, shared by every worker process of one Patchbay instance.

- **Writes in a process of their own.** ``sqlite3`` calls block (a commit with
  ``synchronous=FULL`` waits for an fsync, a write waits up to ``busy_timeout`` while another
  process holds the write lock), and a thread that makes them competes with the busy event loop
  for the GIL after each one. So each open store starts a writer process
  (``patchbay.jobs.sqlite_writer``, whose docstring has the details and the figures) with the
  file's one writing connection: every put, success, claim and other change is sent to it the
  moment it is made, and it group-commits whatever has arrived. The caller's future resolves
  when the writer's answer to its group comes back, after the commit.
- **Reads.** A claim's jobs and messages are read back on a connection of the event loop's own
  (a WAL reader never waits); the other reads (listings, counts, values) go to the writer, which
  runs them after its group's commit.
- **If the writer dies**, every operation waiting for it fails with ``StoreUnavailable`` (its
  write may or may not have been committed: a put was not acknowledged, and a retry finds it
  stored), and the next operation starts a new one.
- **Waking.** SQLite cannot notify another process. An ``asyncio.Event`` per queue wakes this
  process's waiters when the writer reports that a put created jobs or a replay, failure or
  success may have made some runnable; work done by other processes is seen at the waiter's next
  poll.
- **Shared state.** Values, locks and rate budgets live in small tables of the same file, so
  every worker process sees one token cache, one lock and one budget. A lock or a budget is
  decided inside one ``BEGIN IMMEDIATE`` transaction: its read and its write see no other
  process's commit in between. Times are the injected clock's, never SQLite's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import orjson

import patchbay
from patchbay.jobs.model import (
    Claim,
    Job,
    Message,
    Put,
    Selection,
    Status,
    StoredMessage,
)
from patchbay.jobs.sqlite_writer import (
    ACQUIRE,
    CLAIMED,
    GET_VALUE,
    HELD,
    J_COLUMNS,
    MESSAGE_COLUMNS,
    SCHEMA,
    CallOp,
    Frames,
    Op,
    Outcome,
    PutOp,
    StopOp,
    SucceedOp,
    pack,
)
from patchbay.jobs.store import PURGE_BATCH, Row, StoreUnavailable, Value, check_budget

__all__ = ["SCHEMA", "SqliteStore"]

# How long close() waits for the writer to finish what was sent and exit before killing it.
STOP_TIMEOUT: Final = 30.0
# The writer runs the code this process runs: the directory that holds this ``patchbay``.
_CODE_ROOT: Final = str(Path(patchbay.__file__).resolve().parent.parent)
_START: Final = (
    "import sys; sys.path.insert(0, sys.argv.pop(1));"
    " from patchbay.jobs.sqlite_writer import main; main()"
)


class SqliteStore:
    """The job store in one SQLite file (WAL, ``synchronous=FULL``), safe across processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self.clock = clock
        self.busy_timeout = busy_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None  # to the writer process, while it runs
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Lock | None = None
        self._open = False
        self._seqs = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: sqlite3.Connection | None = None  # the event loop's own, for _read
        self._events: dict[str, asyncio.Event] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the writer, open the file and create the schema if it is missing."""
        self._loop = asyncio.get_running_loop()
        self._starting = None  # made anew: a lock belongs to the loop it is first used in
        self._open = True
        try:
            await self._call("nothing")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Commit every write already sent, then stop the writer and close the file."""
        if not self._open:
            return
        self._open = False  # no writer is started from now on
        link = self._link
        if link is not None:
            with contextlib.suppress(StoreUnavailable):
                await self._send(StopOp(next(self._seqs)))
            link.transport.close()
            self._lost(link, None)  # whatever is still pending was sent after the stop
        await self._reap()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(sqlite3.Error):
                reader.close()

    # -- the contract ------------------------------------------------------------------------

    async def put(self, message: Message) -> Put:
        """Store a message and its jobs, unless ``(stream, key)`` exists: then change nothing."""
        # Serialised here so that a bad message fails alone, before it joins a shared commit.
        row = Row.of(message, self.clock())
        message_id, created = await self._send(PutOp(next(self._seqs), row))
        return Put(message_id, created=created)

    async def claim(self, queue: str, owner: str, *, limit: int, lease: float) -> list[Claim]:
        """Lease up to ``limit`` runnable jobs of ``queue`` to ``owner`` (see ``Store.claim``)."""
        if limit < 1:
            return []
        now = self.clock()
        until = now + lease
        args = {"queue": queue, "owner": owner, "now": now, "until": until, "limit": limit}
        ids = await self._write("pick", args)
        if ids is None:
            return []
        # Read once committed: the jobs are this owner's now (nobody else changes a running
        # job before its lease ends) and messages never change.
        rows = self._read(CLAIMED, (ids, owner))
        if rows is None:
            rows = await self._call("execute", CLAIMED, (ids, owner), "rows")
        claims = [Claim(_job(r), _message(r[11:]), until) for r in rows]
        claims.sort(key=lambda c: (c.job.run_at, c.job.id))
        return claims

    async def extend(
        self, job_id: int, owner: str, lease: float, *, attempt: int | None = None
    ) -> bool:
        """Push the lease of a running job further, if ``owner`` still holds it.

        ``attempt`` (the claim's ``job.attempts``), when given, must match too: it tells an
        owner's current claim of a job from its own earlier one whose lease expired.
        """
        now = self.clock()
        sql = f"UPDATE jobs SET lease_until = :until, updated_at = :now WHERE {HELD}"
        args = {"until": now + lease, "now": now, **_held(job_id, owner, attempt)}
        return bool(await self._write("execute", sql, args, "rowcount"))

    async def succeed(self, job_id: int, owner: str, *, attempt: int | None = None) -> bool:
        """Mark a job succeeded, if ``owner`` still holds its lease (and ``attempt`` matches)."""
        # Its own kind of operation: the successes of one group share a statement.
        done: bool = await self._send(
            SucceedOp(next(self._seqs), job_id, owner, attempt, self.clock())
        )
        return done

    async def fail(
        self,
        job_id: int,
        owner: str,
        *,
        error: str,
        retry_in: float | None,
        attempt: int | None = None,
    ) -> bool:
        """Record a failed attempt: pending again in ``retry_in`` seconds, or dead when None."""
        now = self.clock()
        if retry_in is None:
            status, run_at = Status.DEAD.value, None
        else:
            status, run_at = Status.PENDING.value, now + retry_in
        sql = (
            "UPDATE jobs SET status = :status, run_at = coalesce(:run_at, run_at),"
            " last_error = :error, lease_until = NULL, updated_at = :now"
            f" WHERE {HELD} RETURNING queue, ordering_key"
        )
        args = {
            "status": status,
            "run_at": run_at,
            "error": error,
            "now": now,
            **_held(job_id, owner, attempt),
        }
        rows = await self._write("execute", sql, args, "rows")
        # Due at once, or dead and so no longer holding back the next job of its key.
        due = run_at is not None and run_at <= now
        self._wake(queue for queue, key in rows if due or (retry_in is None and key is not None))
        return bool(rows)

    async def replay(self, selection: Selection) -> int:
        """Make the selected jobs that are not running pending again, due now; return how many."""
        now = self.clock()
        where, args = _where(selection)
        sql = (
            "UPDATE jobs SET status = 'pending', run_at = ?, attempts = 0, lease_until = NULL,"
            " updated_at = ? WHERE status != 'running' AND id IN"
            f" (SELECT j.id FROM jobs AS j JOIN messages AS m ON m.id = j.message_id WHERE {where})"
            " RETURNING queue"
        )
        rows = await self._write("execute", sql, (now, now, *args), "rows")
        self._wake(queue for (queue,) in rows)
        return len(rows)

    async def drop(self, selection: Selection) -> int:
        """Delete the selected jobs that are not running; return how many."""
        where, args = _where(selection)
        sql = (
            "DELETE FROM jobs WHERE status != 'running' AND id IN"
            f" (SELECT j.id FROM jobs AS j JOIN messages AS m ON m.id = j.message_id WHERE {where})"
        )
        return int(await self._write("execute", sql, args, "rowcount"))

    async def purge(self, before: float, *, batch: int = PURGE_BATCH) -> int:
        """Delete old messages whose jobs have all ended (see ``Store.purge``)."""
        total, start = 0, 0
        while start is not None:  # one writer call per window, so puts interleave
            deleted, start = await self._write("purge", start, batch, before)
            total += deleted
        return int(total)

    async def jobs(self, selection: Selection, *, limit: int = 100) -> list[Job]:
        """The selected jobs, newest first."""
        where, args = _where(selection)
        sql = (
            f"SELECT {J_COLUMNS} FROM jobs AS j JOIN messages AS m ON m.id = j.message_id"
            f" WHERE {where} ORDER BY j.id DESC LIMIT ?"
        )
        rows = await self._call("execute", sql, (*args, limit), "rows")
        return [_job(r) for r in rows]

    async def message(self, message_id: int) -> StoredMessage | None:
        """One stored message."""
        sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?"
        row = await self._call("execute", sql, (message_id,), "one")
        return None if row is None else _message(row)

    async def counts(self, queue: str | None = None) -> dict[Status, int]:
        """How many jobs are in each status (every status present, zero if none)."""
        args: tuple[str, ...] = ()
        if queue is None:
            sql = "SELECT status, count(*) FROM jobs GROUP BY status"
        else:
            sql = "SELECT status, count(*) FROM jobs WHERE queue = ? GROUP BY status"
            args = (queue,)
        rows = await self._call("execute", sql, args, "rows")
        counts = dict.fromkeys(Status, 0)
        counts.update({Status(status): n for status, n in rows})
        return counts

    async def wait(self, queue: str, seconds: float) -> None:
        """Return when this process made jobs of ``queue`` runnable, or after ``seconds``."""
        event = self._event(queue)
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            # Cleared only here, so a wake-up that came while nobody waited is not lost.
            event.clear()

    # -- shared state ------------------------------------------------------------------------

    async def get_value(self, key: str) -> Value | None:
        """The value stored under ``key``, unless it is missing or expired."""
        row = await self._call("execute", GET_VALUE, (key, self.clock()), "one")
        return None if row is None else Value(bytes(row[0]), row[1])

    async def set_value(self, key: str, data: bytes, *, expires_at: float | None = None) -> None:
        """Store ``data`` under ``key`` (replacing any), until ``expires_at`` if given."""
        await self._write("set_value", self.clock(), (key, bytes(data), expires_at))

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lock ``name`` for ``ttl`` seconds if it is free, expired or already ours."""
        now = self.clock()
        args = {"name": name, "owner": owner, "until": now + ttl, "now": now}
        return bool(await self._write("execute", ACQUIRE, args, "rows"))

    async def release(self, name: str, owner: str) -> None:
        """Free the lock ``name`` if ``owner`` holds it."""
        sql = "DELETE FROM locks WHERE name = ? AND owner = ?"
        await self._write("execute", sql, (name, owner), "rowcount")

    async def take(self, bucket: str, limit: int, window: float) -> float:
        """Spend one call from a sliding-window budget (see ``Store.take``)."""
        check_budget(limit, window)
        now = self.clock()
        # A call made at ``at`` is in the window while ``at > horizon``; ``at - horizon`` is then
        # its time left, and positive even after rounding, unlike ``at + window - now``.
        horizon = now - window
        return float(await self._write("take", bucket, horizon, limit, now))

    # -- talking to the writer ---------------------------------------------------------------

    async def _call(self, name: str, *args: Any) -> Any:
        """Run ``CALLS[name]`` in the writer, outside any transaction (after its group's)."""
        return await self._send(CallOp(next(self._seqs), name, args, write=False))

    async def _write(self, name: str, *args: Any) -> Any:
        """Run ``CALLS[name]`` in the writer, in its group's ``BEGIN IMMEDIATE`` transaction."""
        return await self._send(CallOp(next(self._seqs), name, args, write=True))

    async def _send(self, op: Op) -> Any:
        """Send ``op`` to the writer now (starting one if none runs) and await its outcome."""
        link = self._link
        if link is None:
            link = await self._start()
        frame = pack(op)
        future: asyncio.Future[Any] = link.loop.create_future()
        self._pending[op.seq] = future
        link.transport.write(frame)
        return await future

    async def _start(self) -> _Link:
        """Start the writer process (one at a time) and connect to it."""
        loop = self._loop
        if not self._open or loop is None:
            raise StoreUnavailable("SQLite job store is not open")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._link is not None:
                return self._link
            await self._reap()  # a writer that died: its exit status is collected first
            ours, theirs = socket.socketpair()
            try:
                with theirs:
                    self._process = await asyncio.create_subprocess_exec(
                        *(sys.executable, "-c", _START, _CODE_ROOT, str(theirs.fileno())),
                        *(self.path, str(self.busy_timeout)),
                        pass_fds=(theirs.fileno(),),
                        stdin=subprocess.DEVNULL,
                    )
                transport, link = await loop.create_unix_connection(
                    lambda: _Link(self, loop), sock=ours
                )
                # uvloop may return before it calls connection_made.
                link.transport = transport
            except OSError as exc:
                ours.close()
                raise StoreUnavailable(f"SQLite job store writer cannot start: {exc}") from exc
            self._link = link
            return link

    async def _reap(self) -> None:
        """Wait for the writer process to end (killing it past ``STOP_TIMEOUT``)."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _answered(self, outcomes: list[Outcome], woken: list[str]) -> None:
        """The writer's answer to one group: resolve each operation's future, wake waiters."""
        pending = self._pending
        for seq, result, exc in outcomes:
            future = pending.pop(seq, None)
            if future is None or future.done():  # its caller was cancelled; the work was done
                continue
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)
        self._wake(woken)

    def _lost(self, link: _Link, exc: BaseException | None) -> None:
        """The writer's socket closed: nothing sent to it will be answered."""
        if link is not self._link:  # an earlier writer's, closed by close(): all answered
            return
        self._link = None
        pending, self._pending = self._pending, {}
        reason = f": {exc}" if exc is not None else ""
        for future in pending.values():
            if not future.done():
                future.set_exception(StoreUnavailable(f"SQLite job store writer stopped{reason}"))

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any] | None:
        """A short read on the event loop's own connection; None when it cannot be done now.

        For reads bounded by a handful of rows (a claim's jobs and messages): made here they
        save a trip through the writer. The connection never waits (``busy_timeout`` 0); a WAL
        reader is only ever refused in rare moments (recovery), and then the writer reads.
        """
        try:
            if self._reader is None:
                self._reader = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            return self._reader.execute(sql, args).fetchall()
        except sqlite3.Error:
            reader, self._reader = self._reader, None
            if reader is not None:
                with contextlib.suppress(sqlite3.Error):
                    reader.close()
            return None

    def _wake(self, queues: Iterable[str]) -> None:
        for queue in queues:
            self._event(queue).set()

    def _event(self, queue: str) -> asyncio.Event:
        event = self._events.get(queue)
        if event is None:
            event = self._events[queue] = asyncio.Event()
        return event


class _Link(asyncio.Protocol):
    """The event loop's end of the writer's socket: answers in, loss reported."""

    def __init__(self, store: SqliteStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.transport: asyncio.WriteTransport
        self._frames = Frames()

    def data_received(self, data: bytes) -> None:
        for outcomes, woken in self._frames.feed(data):
            self.store._answered(outcomes, woken)

    def connection_lost(self, exc: Exception | None) -> None:
        self.store._lost(self, exc)


def _held(job_id: int, owner: str, attempt: int | None) -> dict[str, Any]:
    return {"job_id": job_id, "owner": owner, "attempt": attempt}


def _where(selection: Selection) -> tuple[str, list[Any]]:
    """A selection as SQL terms on ``jobs AS j`` joined with ``messages AS m``, and their args."""
    terms: list[str] = []
    args: list[Any] = []

    def term(sql: str, arg: Any) -> None:
        terms.append(sql)
        args.append(arg)

    if selection.queue is not None:
        term("j.queue = ?", selection.queue)
    # One JSON array argument instead of a placeholder per value: no limit on how many.
    if selection.job_ids:
        ids = [int(i) for i in selection.job_ids]
        term("j.id IN (SELECT value FROM json_each(?))", orjson.dumps(ids).decode())
    if selection.message_ids:
        ids = [int(i) for i in selection.message_ids]
        term("j.message_id IN (SELECT value FROM json_each(?))", orjson.dumps(ids).decode())
    if selection.stream is not None:
        term("m.stream = ?", selection.stream)
    if selection.key is not None:
        term("m.key = ?", selection.key)
    if selection.task is not None:
        term("j.task = ?", selection.task)
    if selection.statuses:
        values = [Status(s).value for s in selection.statuses]
        term("j.status IN (SELECT value FROM json_each(?))", orjson.dumps(values).decode())
    if selection.since is not None:
        term("j.created_at >= ?", selection.since)
    if selection.until is not None:
        term("j.created_at < ?", selection.until)
    return " AND ".join(terms) or "1", args


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0],
        message_id=row[1],
        queue=row[2],
        task=row[3],
        status=Status(row[4]),
        attempts=row[5],
        run_at=row[6],
        ordering_key=row[7],
        last_error=row[8],
        created_at=row[9],
        updated_at=row[10],
    )


def _message(row: tuple[Any, ...]) -> StoredMessage:
    return StoredMessage(
        id=row[0],
        stream=row[1],
        key=row[2],
        body=bytes(row[3]),
        meta=orjson.loads(row[4]),
        created_at=row[5],
    )
