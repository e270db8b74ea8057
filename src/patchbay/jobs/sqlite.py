"""The job store in one SQLite file, shared by every worker process of one Patchbay instance.

- **One dedicated thread per store.** ``sqlite3`` calls block: a commit with
  ``synchronous=FULL`` waits for an fsync, and a write waits up to ``busy_timeout`` while another
  process holds the write lock. None of that may run on the event loop, so the store's one
  connection belongs to one thread, which does every commit and everything that may wait or
  scan. One thread, not a pool: SQLite has a single writer per file anyway, and a single owner
  serialises this process's work without a lock and is what makes group commit possible.
- **Group commit.** The fsync dominates a put (measured here: 3.8k rows/s at one commit per row,
  25k at 16 rows per commit, 56k at 128). When the thread becomes free it takes every write
  waiting (puts, successes, claims, every other change) and runs them in one transaction with one
  commit; each caller's future resolves only after that commit returned. A lone write still pays
  a commit of its own; a burst shares one. If the shared transaction fails for a reason that is
  not the file's (one bad message, say), each write is retried alone, so a bad one fails alone.
- **Few GIL hand-offs.** Each ``sqlite3`` call on the thread gives up the GIL and must take it
  back from the event loop, which holds it while it serves requests; under load each take-back
  waits for the loop's next pause, and a group commit that made a few calls per put took 4.4 ms
  for 31 puts (0.84 ms in a plain loop). So the calls that never wait and are bounded by the
  group's size are made on the event loop's thread, while the thread is idle and the connection
  therefore unused: opening the transaction (``BEGIN IMMEDIATE`` with ``busy_timeout`` 0: if
  another process holds the lock, the thread does it all instead and waits), inserting every
  message with one multi-row ``INSERT`` (explicit ids after one ``max(id)``) and every job with
  another, and marking the group's successes with one ``SELECT`` and one ``UPDATE``. The thread
  then only runs the group's other writes (a claim is three statements, whatever its size) and
  the COMMIT. A claim's jobs and messages are read back after the commit on a connection of the
  loop's own (a WAL reader, which never waits). The loop hands the thread its work once per
  group, not per call.
- **Puts alone: one statement, and no round trip between groups.** A group of nothing but puts
  (intake without handlers) is one ``INSERT`` into a temp view whose trigger writes the messages
  and jobs, in autocommit: SQLite opens the write transaction, inserts, commits and fsyncs inside
  one ``sqlite3_step``, without the GIL (``_commit_chunk``). When it returns, the thread takes
  the puts the loop queued meanwhile and commits them at once, instead of handing the
  connection back and waiting to be woken again; it goes back to the loop as soon as anything
  else (a success, a claim, a read) waits.
- **Checkpoints off the commit path.** SQLite's automatic checkpoint ran inside a commit about
  every tenth group, on the store's thread; a ``_Checkpointer`` thread with its own connection
  runs passive checkpoints after every few MB committed instead (the automatic one stays as a
  backstop at a far larger size).
- **Across processes.** WAL lets the other workers read while one writes. Every write starts with
  ``BEGIN IMMEDIATE``, which takes the file's write lock (waiting up to ``busy_timeout``) before
  reading anything, so a claim's choice and its update see no other process's commit in between
  and no transaction ever fails with ``SQLITE_BUSY_SNAPSHOT`` half-way. Two processes storing the
  same ``(stream, key)`` therefore also serialise: the second finds the first's row
  (``ON CONFLICT DO NOTHING``, then a select) and reports a duplicate.
- **Waking.** SQLite cannot notify another process. An ``asyncio.Event`` per queue wakes this
  process's waiters when a put creates jobs or a replay, failure or success may have made some
  runnable; work done by other processes is seen at the waiter's next poll.
- **Shared state.** Values, locks and rate budgets live in small tables of the same file, so
  every worker process sees one token cache, one lock and one budget. A lock or a budget is
  decided inside one ``BEGIN IMMEDIATE`` transaction: its read and its write see no other
  process's commit in between. Times are the injected clock's, never SQLite's.
- **Errors.** A ``sqlite3`` error saying the file cannot be used now (I/O error, disk full, locked
  past ``busy_timeout``, cannot open, corrupt, read-only) becomes ``StoreUnavailable``. The
  connection is then dropped and the next operation opens it again, so the store recovers when
  the disk does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import queue as threadqueue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson

from patchbay.jobs.model import (
    Claim,
    Job,
    Message,
    NewJob,
    Put,
    Selection,
    Status,
    StoredMessage,
)
from patchbay.jobs.store import QueuedPut, QueuedSuccess, Row, StoreUnavailable, Value

T = TypeVar("T")

MAX_BATCH: Final = 1024  # writes per transaction; bounds one commit's latency, not its benefit
# Rows per multi-row statement: at most 7 parameters a row stays under SQLite's smallest
# compiled-in parameter limit (999); row counts are rounded up to a power of two (the rest
# padded with NULL rows that the statement skips), so only 8 texts per statement are prepared.
CHUNK: Final = 128
# Puts the event loop inserts itself per group (see ``_begin``); more wait for the thread. Kept
# small enough that the transaction's pages stay in SQLite's page cache (no spill to disk).
LOOP_BATCH: Final = 128
# WAL checkpoints run on a thread and connection of their own (``_Checkpointer``), passive,
# requested after about this many bytes were committed (SQLite's own default is every 1000
# pages, 4 MB). The store's connection keeps an automatic checkpoint far above that, only as a
# backstop in case the checkpointer cannot keep up: a checkpoint inside a commit delays that
# group's answers (and the whole commit pipeline) by the copy and its fsync.
CHECKPOINT_BYTES: Final = 4 << 20
BACKSTOP_PAGES: Final = 16384
ACTIVE: Final = "('pending', 'running')"

SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL,
    meta TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (stream, key)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    queue TEXT NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run_at REAL NOT NULL,
    ordering_key TEXT,
    owner TEXT,
    lease_until REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (message_id, queue, task)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (queue, run_at) WHERE status IN {ACTIVE};
CREATE INDEX IF NOT EXISTS jobs_order ON jobs (queue, task, ordering_key, id)
    WHERE status IN {ACTIVE} AND ordering_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (queue, status);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    bucket TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_bucket ON calls (bucket, at);
"""

JOB_COLUMNS: Final = (
    "id, message_id, queue, task, status, attempts, run_at, ordering_key, last_error,"
    " created_at, updated_at"
)
J_COLUMNS: Final = ", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))
MESSAGE_COLUMNS: Final = "id, stream, key, body, meta, created_at"

# Run inside the group's BEGIN IMMEDIATE: no other process can insert until it commits, so the
# ids after max(id) are free and each message's id is known without a RETURNING row per put.
NEXT_MESSAGE_ID: Final = "SELECT coalesce(max(id), 0) + 1 FROM messages"
# Which of the given (stream, key) pairs are stored, and as which ids: one row, whatever the
# count (each row fetched is another GIL hand-off on the store's thread).
FIND_MESSAGES: Final = """
SELECT json_group_array(json_array(m.id, m.stream, m.key))
FROM json_each(?) AS u JOIN messages AS m
    ON m.stream = json_extract(u.value, '$[0]') AND m.key = json_extract(u.value, '$[1]')
"""
# The put fast path (``_commit_chunk``): a group of puts is one INSERT into this view, in
# autocommit mode, so that SQLite opens the write transaction, inserts every message and job,
# commits and fsyncs inside one ``sqlite3_step``, which runs without the GIL. Each statement
# made on the store's thread otherwise has to take the GIL back from the busy event loop (up to
# the 5 ms switch interval each time). Temp objects: per connection, nothing in the file changes.
# If a message's id or its (stream, key) is taken already (a duplicate, or an id another process
# used since), the whole statement is aborted (nothing is written) and the caller takes the
# locked way for that group, which tells duplicates apart and picks ids under the lock.
PUT_VIEW: Final = (
    "CREATE TEMP VIEW IF NOT EXISTS put_rows (id, stream, key, body, meta, created_at, jobs)"
    " AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0"
)
PUT_TRIGGER: Final = """
CREATE TEMP TRIGGER IF NOT EXISTS put_rows_insert INSTEAD OF INSERT ON put_rows BEGIN
    INSERT INTO messages (id, stream, key, body, meta, created_at)
        SELECT NEW.id, NEW.stream, NEW.key, NEW.body, NEW.meta, NEW.created_at WHERE 1
        ON CONFLICT DO NOTHING;
    SELECT RAISE(ABORT, 'patchbay: put skipped') WHERE changes() = 0;
    INSERT INTO jobs (message_id, queue, task, status, run_at, ordering_key, created_at,
            updated_at)
        SELECT NEW.id, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), 'pending',
            NEW.created_at + json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]'),
            NEW.created_at, NEW.created_at
        FROM json_each(NEW.jobs) AS j WHERE 1
        ORDER BY j.key
        ON CONFLICT DO NOTHING;
END
"""
# A claim in three steps (see ``SqliteStore.claim``): which jobs (as one JSON array), lease
# them, then read them back with their messages. Both the partial indexes are chosen by the
# planner only because the query repeats their WHERE terms; the `run_at <= :now` term also holds
# for a running job (it was due when claimed) and bounds the index range, so a large backlog of
# future retries is never scanned.
PICK: Final = f"""
SELECT json_group_array(id) FROM (
    SELECT j.id FROM jobs AS j
    WHERE j.queue = :queue AND j.status IN {ACTIVE} AND j.run_at <= :now
        AND (j.status = 'pending' OR j.lease_until <= :now)
        AND (j.ordering_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM jobs AS e
            WHERE e.queue = j.queue AND e.task = j.task AND e.ordering_key = j.ordering_key
                AND e.id < j.id AND e.status IN {ACTIVE}))
    ORDER BY j.run_at, j.id
    LIMIT :limit)
"""
LEASE: Final = """
UPDATE jobs SET status = 'running', owner = :owner, lease_until = :until,
    attempts = attempts + 1, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids))
"""
# A job taken over since (its lease expired at once) is not this claim's any more.
CLAIMED: Final = f"""
SELECT {J_COLUMNS}, m.id, m.stream, m.key, m.body, m.meta, m.created_at
FROM jobs AS j JOIN messages AS m ON m.id = j.message_id
WHERE j.id IN (SELECT value FROM json_each(?)) AND j.owner = ? AND j.status = 'running'
"""
# The lease is still this owner's (and this claim's, when the attempt is given).
HELD: Final = (
    "id = :job_id AND owner = :owner AND status = 'running'"
    " AND (:attempt IS NULL OR attempts = :attempt)"
)
GET_VALUE: Final = (
    "SELECT data, expires_at FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
)
SET_VALUE: Final = """
INSERT INTO kv (key, data, expires_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at
"""
# The row is written only when the lock is free (no row), expired, or already this owner's;
# RETURNING then says whether it was.
ACQUIRE: Final = """
INSERT INTO locks (name, owner, expires_at) VALUES (:name, :owner, :until)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE locks.owner = excluded.owner OR locks.expires_at <= :now
RETURNING 1
"""
# The call that has to leave the window before another fits: the ``limit``-th newest.
BLOCKING_CALL: Final = """
SELECT at FROM calls WHERE bucket = ? AND at > ? ORDER BY at DESC LIMIT 1 OFFSET ?
"""

# Primary result codes that mean "the file cannot be used now", not "this statement is wrong".
UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)


def unavailable(exc: BaseException) -> bool:
    """Whether a ``sqlite3`` error means the database cannot be used right now."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code >= 0:
        return (code & 0xFF) in UNAVAILABLE_CODES
    return isinstance(exc, sqlite3.OperationalError)


# What the thread hands back to the event loop: a future, its result or its exception.
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    write: bool  # run inside the group's BEGIN IMMEDIATE transaction, committed with it


@dataclass(slots=True)
class _Stop:
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Begun:
    """Writes the loop made in a transaction it opened (puts, successes); the thread commits."""

    ops: list[_Write]
    outcomes: list[_Outcome]
    woken: set[str]


_Write = QueuedPut | QueuedSuccess | _Call
_Op = QueuedPut | QueuedSuccess | _Call | _Stop | _Begun


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
        # Lists of operations: the loop hands over what it queued in one iteration at once.
        self._ops: threadqueue.SimpleQueue[list[_Op]] = threadqueue.SimpleQueue()
        self._outbox: list[_Op] = []  # everything but puts; touched by the loop only
        # Puts waiting: appended by the loop, taken by the thread itself while it has the
        # connection (``_run``), so that a group is committed as soon as the previous
        # commit returned, without a round trip through the loop in between.
        self._put_box: collections.deque[QueuedPut] = collections.deque()
        self._scheduled = False  # a ``_hand_over`` is due in this loop iteration
        self._lent = False  # the thread has the connection (and the outbox waits for it)
        # The id the next fast-path message gets (see ``_commit_chunk``); only the connection's
        # current user reads or changes it. None: read max(id) again.
        self._next_id: int | None = None
        self._checkpointer: _Checkpointer | None = None
        self._unchecked = 0  # bytes committed since the last checkpoint request
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None  # see _begin for who may touch it
        self._reader: sqlite3.Connection | None = None  # the event loop's own, for _read
        self._events: dict[str, asyncio.Event] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the store's thread, open the file and create the schema if it is missing."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._run, name=f"jobs-sqlite:{self.path}", daemon=True
            )
            self._checkpointer = _Checkpointer(self.path)
            self._thread.start()
        try:
            await self._call(lambda conn: None)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Commit every put already queued, then close the connection and end the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        stopped: asyncio.Future[None] = loop.create_future()
        self._submit(_Stop(stopped))  # after everything queued before it
        self._thread = None  # nothing can be queued after the stop
        await stopped
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(sqlite3.Error):
                reader.close()
        thread.join()  # the thread's last act was to resolve ``stopped``: this returns at once

    # -- the contract ------------------------------------------------------------------------

    async def put(self, message: Message) -> Put:
        """Store a message and its jobs, unless ``(stream, key)`` exists: then change nothing."""
        # Serialised here so that a bad message fails alone, before it joins a shared commit.
        row = Row.of(message, self.clock())
        future: asyncio.Future[Put] = self._running_loop().create_future()
        self._submit(QueuedPut(row, future))
        return await future

    async def claim(self, queue: str, owner: str, *, limit: int, lease: float) -> list[Claim]:
        """Lease up to ``limit`` runnable jobs of ``queue`` to ``owner`` (see ``Store.claim``)."""
        now = self.clock()
        until = now + lease
        args = {"queue": queue, "owner": owner, "now": now, "until": until, "limit": limit}

        def pick(conn: sqlite3.Connection) -> str | None:
            # Three statements whatever the count: each row fetched on the store's thread is
            # another GIL hand-off with the busy event loop (a claim of 16 used to cost 34).
            (ids,) = conn.execute(PICK, args).fetchone()
            if ids == "[]":
                return None
            conn.execute(LEASE, {**args, "ids": ids})
            return str(ids)

        if limit < 1:
            return []
        ids = await self._write(pick)
        if ids is None:
            return []
        # Read once committed: the jobs are this owner's now (nobody else changes a running
        # job before its lease ends) and messages never change.
        rows = self._read(CLAIMED, (ids, owner))
        if rows is None:
            rows = await self._call(lambda conn: conn.execute(CLAIMED, (ids, owner)).fetchall())
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
        changed = await self._write(lambda conn: conn.execute(sql, args).rowcount)
        return bool(changed)

    async def succeed(self, job_id: int, owner: str, *, attempt: int | None = None) -> bool:
        """Mark a job succeeded, if ``owner`` still holds its lease (and ``attempt`` matches)."""
        # Queued like a put: the successes of one group share a statement and the commit.
        future: asyncio.Future[bool] = self._running_loop().create_future()
        self._submit(QueuedSuccess(job_id, owner, attempt, self.clock(), future))
        return await future

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
        rows = await self._write(lambda conn: conn.execute(sql, args).fetchall())
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
        rows = await self._write(lambda conn: conn.execute(sql, (now, now, *args)).fetchall())
        self._wake(queue for (queue,) in rows)
        return len(rows)

    async def drop(self, selection: Selection) -> int:
        """Delete the selected jobs that are not running; return how many."""
        where, args = _where(selection)
        sql = (
            "DELETE FROM jobs WHERE status != 'running' AND id IN"
            f" (SELECT j.id FROM jobs AS j JOIN messages AS m ON m.id = j.message_id WHERE {where})"
        )
        return int(await self._write(lambda conn: conn.execute(sql, args).rowcount))

    async def jobs(self, selection: Selection, *, limit: int = 100) -> list[Job]:
        """The selected jobs, newest first."""
        where, args = _where(selection)
        sql = (
            f"SELECT {J_COLUMNS} FROM jobs AS j JOIN messages AS m ON m.id = j.message_id"
            f" WHERE {where} ORDER BY j.id DESC LIMIT ?"
        )
        rows = await self._call(lambda conn: conn.execute(sql, (*args, limit)).fetchall())
        return [_job(r) for r in rows]

    async def message(self, message_id: int) -> StoredMessage | None:
        """One stored message."""
        sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?"
        row = await self._call(lambda conn: conn.execute(sql, (message_id,)).fetchone())
        return None if row is None else _message(row)

    async def counts(self, queue: str | None = None) -> dict[Status, int]:
        """How many jobs are in each status (every status present, zero if none)."""
        args: tuple[str, ...] = ()
        if queue is None:
            sql = "SELECT status, count(*) FROM jobs GROUP BY status"
        else:
            sql = "SELECT status, count(*) FROM jobs WHERE queue = ? GROUP BY status"
            args = (queue,)
        rows = await self._call(lambda conn: conn.execute(sql, args).fetchall())
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
        args = (key, self.clock())
        row = await self._call(lambda conn: conn.execute(GET_VALUE, args).fetchone())
        return None if row is None else Value(bytes(row[0]), row[1])

    async def set_value(self, key: str, data: bytes, *, expires_at: float | None = None) -> None:
        """Store ``data`` under ``key`` (replacing any), until ``expires_at`` if given."""
        now = self.clock()
        args = (key, bytes(data), expires_at)

        def set_value(conn: sqlite3.Connection) -> None:
            # Expired values are dropped here, so keys that are never set again do not pile up.
            conn.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))
            conn.execute(SET_VALUE, args)

        await self._write(set_value)

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lock ``name`` for ``ttl`` seconds if it is free, expired or already ours."""
        now = self.clock()
        args = {"name": name, "owner": owner, "until": now + ttl, "now": now}
        rows = await self._write(lambda conn: conn.execute(ACQUIRE, args).fetchall())
        return bool(rows)

    async def release(self, name: str, owner: str) -> None:
        """Free the lock ``name`` if ``owner`` holds it."""
        sql = "DELETE FROM locks WHERE name = ? AND owner = ?"
        await self._write(lambda conn: conn.execute(sql, (name, owner)).rowcount)

    async def take(self, bucket: str, limit: int, window: float) -> float:
        """Spend one call from a sliding-window budget (see ``Store.take``)."""
        _check_budget(limit, window)
        now = self.clock()
        # A call made at ``at`` is in the window while ``at > horizon``; ``at - horizon`` is then
        # its time left, and positive even after rounding, unlike ``at + window - now``.
        horizon = now - window

        def take(conn: sqlite3.Connection) -> float:
            conn.execute("DELETE FROM calls WHERE bucket = ? AND at <= ?", (bucket, horizon))
            row = conn.execute(BLOCKING_CALL, (bucket, horizon, limit - 1)).fetchone()
            if row is not None:
                return float(row[0]) - horizon
            conn.execute("INSERT INTO calls (bucket, at) VALUES (?, ?)", (bucket, now))
            return 0.0

        return await self._write(take)

    # -- the event loop's side ---------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._thread is None or self._loop is None:
            raise StoreUnavailable("SQLite job store is not open")
        return self._loop

    def _submit(self, op: _Op) -> None:
        loop = self._running_loop()
        if isinstance(op, QueuedPut):
            self._put_box.append(op)
        else:
            self._outbox.append(op)
        if not self._lent and not self._scheduled:
            # One hand-over per loop iteration at most: a queue put wakes the thread (a futex
            # call and a GIL hand-off each), so a burst of calls goes over as one list. While
            # the thread has the connection it takes the puts itself and comes back for the rest.
            self._scheduled = True
            loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        """Give the thread the connection and everything queued."""
        self._scheduled = False
        if self._lent or not (self._outbox or self._put_box):
            return
        ops, self._outbox = self._outbox, []
        puts = _drain(self._put_box, len(self._put_box))
        if any(isinstance(op, QueuedSuccess) or (isinstance(op, _Call) and op.write) for op in ops):
            # Other writes (successes, claims...): one transaction, opened here with the puts
            # and successes inserted, committed by the thread with the rest.
            succeeds = [op for op in ops if isinstance(op, QueuedSuccess)][:LOOP_BATCH]
            ops = [*puts, *ops]
            begun = self._begin([*puts[:LOOP_BATCH], *succeeds])
            if begun is not None:
                taken = set(map(id, begun.ops))
                ops = [begun, *(op for op in ops if id(op) not in taken)]
        else:
            # Puts alone (and reads): the thread commits them in one statement, see _commit_puts.
            ops = [*puts, *ops]
        self._lent = True
        self._ops.put(ops)

    def _begin(self, ops: list[_Write]) -> _Begun | None:
        """Open the group's transaction and write ``ops`` here, on the event loop's thread.

        Puts and successes are a few statements per group, cheap (about 5 µs a put) and
        bounded, and made here they cost no GIL hand-offs; only the COMMIT, whose fsync blocks,
        goes to the thread. Only ever while the thread is idle, so the connection has one user
        at a time. Never waits for the file's lock: when another process holds it, or anything
        else goes wrong, the thread does it all (and waits, or reports the error) instead.
        """
        conn = self._conn
        if conn is None:  # dropped after an error: the thread opens it again
            return None
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            outcomes, woken = _write_group(conn, ops)
        except Exception:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return None
        return _Begun(ops, outcomes, woken)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the connection on the store's thread, outside any transaction."""
        future: asyncio.Future[T] = self._running_loop().create_future()
        self._submit(_Call(fn, future, write=False))
        return await future

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the store's thread in a ``BEGIN IMMEDIATE`` transaction (maybe shared)."""
        future: asyncio.Future[T] = self._running_loop().create_future()
        self._submit(_Call(fn, future, write=True))
        return await future

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any] | None:
        """A short read on the event loop's own connection; None when it cannot be done now.

        For reads bounded by a handful of rows (a claim's jobs and messages): made here they
        cost no GIL hand-offs. The connection never waits (``busy_timeout`` 0); a WAL reader
        is only ever refused in rare moments (recovery), and then the thread reads instead.
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

    def _settle(self, outcomes: list[_Outcome], woken: set[str], idle: bool) -> None:
        if idle:
            self._lent = False  # the thread is done with the connection
        for future, result, exc in outcomes:
            if future.done():  # its caller was cancelled; the work was done all the same
                continue
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)
        self._wake(woken)
        if idle:
            # What was queued meanwhile goes over at once, in this same callback.
            self._hand_over()

    # -- the store's thread ------------------------------------------------------------------

    def _run(self) -> None:
        ops = self._ops.get()
        while True:
            outcomes, woken, stop = self._round(ops)
            if stop:
                self._deliver(outcomes, woken, idle=True)
                return
            # While only puts are waiting, keep the connection and commit them at once: the next
            # group's commit starts as soon as this one returned, instead of after a round trip
            # through the busy loop (its wake-up, then this thread's). Anything else waiting
            # (a success, a claim, a read) ends the run: the loop hands it over with the puts.
            while not self._outbox and self._put_box:
                puts = _drain(self._put_box, CHUNK)
                self._deliver(outcomes, woken, idle=False)
                outcomes, woken = self._commit_puts(puts)
            # One call back to the loop per round, which also returns the connection to it.
            self._deliver(outcomes, woken, idle=True)
            ops = self._ops.get()

    def _round(self, ops: list[_Op]) -> tuple[list[_Outcome], set[str], bool]:
        """Run what the loop handed over; return the outcomes, queues to wake, and if it stops."""
        stop: _Stop | None = None
        begun: _Begun | None = None
        puts: list[QueuedPut] = []
        writes: list[_Write] = []
        reads: list[_Call] = []
        for op in ops:
            if isinstance(op, _Stop):
                stop = op
            elif isinstance(op, _Begun):
                begun = op
            elif isinstance(op, QueuedPut):
                puts.append(op)
            elif isinstance(op, _Call) and not op.write:
                reads.append(op)
            else:
                writes.append(op)
        outcomes: list[_Outcome] = []
        woken: set[str] = set()
        if begun is not None or writes:
            # Puts with other writes: one transaction for them all (puts first, as queued).
            self._next_id = None  # this path picks message ids of its own
            writes = [*puts, *writes]
            if begun is not None:
                # The loop's transaction takes the first group; it is committed even if empty.
                done, wakes = self._commit(writes[:MAX_BATCH], begun)
                outcomes += done
                woken |= wakes
                writes = writes[MAX_BATCH:]
            for start in range(0, len(writes), MAX_BATCH):
                done, wakes = self._commit(writes[start : start + MAX_BATCH])
                outcomes += done
                woken |= wakes
        elif puts:
            outcomes, woken = self._commit_puts(puts)
        outcomes += [self._run_call(op) for op in reads]
        if stop is not None:
            if self._checkpointer is not None:
                self._checkpointer.stop()
            self._disconnect()
            outcomes.append((stop.future, None, None))
        return outcomes, woken, stop is not None

    def _committed(self, size: int) -> None:
        """Count ``size`` bytes committed; ask for a checkpoint after every few MB."""
        self._unchecked += size
        if self._unchecked >= CHECKPOINT_BYTES and self._checkpointer is not None:
            self._unchecked = 0
            self._checkpointer.request()

    def _deliver(self, outcomes: list[_Outcome], woken: set[str], *, idle: bool) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(self._settle, outcomes, woken, idle)

    def _commit_puts(self, puts: list[QueuedPut]) -> tuple[list[_Outcome], set[str]]:
        """Commit puts alone, ``CHUNK`` at a time, each chunk one autocommit statement."""
        outcomes: list[_Outcome] = []
        woken: set[str] = set()
        for start in range(0, len(puts), CHUNK):
            done, wakes = self._commit_chunk(puts[start : start + CHUNK])
            outcomes += done
            woken |= wakes
        return outcomes, woken

    def _commit_chunk(self, puts: list[QueuedPut]) -> tuple[list[_Outcome], set[str]]:
        """At most ``CHUNK`` puts in one ``INSERT INTO put_rows`` (see ``PUT_TRIGGER``).

        Message ids come from ``_next_id``, not from a read inside the transaction: that read
        would be one more statement, and one more wait for the GIL. Durability is unchanged:
        the statement is its own transaction, committed (WAL, ``synchronous=FULL``: fsynced)
        before ``sqlite3_step`` returns, and nothing is resolved before that. If a message's key
        is stored already (a duplicate) or its id was taken (by another process since), the
        trigger aborts the statement, nothing is written, and the group takes the locked way.
        """
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connection()
            if self._next_id is None:
                (self._next_id,) = conn.execute(NEXT_MESSAGE_ID).fetchone()
            next_id: int = self._next_id
            first: dict[tuple[str, str], int] = {}  # (stream, key) -> its first put's position
            for i, op in enumerate(puts):
                first.setdefault((op.row.stream, op.row.key), i)
            wanted = {pair: next_id + n for n, pair in enumerate(first)}
            rows = [
                (wanted[pair], *pair, row.body, row.meta, row.now, _jobs_json(row.jobs))
                for pair, i in first.items()
                for row in (puts[i].row,)
            ]
            ((count, params),) = _chunks(rows, 7)
            conn.execute(_put_rows(count), params)
        except Exception as exc:
            self._next_id = None
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if unavailable(exc):
                error = self._translate(exc)
                return [(op.future, None, error) for op in puts], set()
            # A duplicate, an id taken, or one bad put: nothing was written. The locked way
            # tells duplicates apart, and runs each put alone if the group fails.
            return self._commit(list(puts))
        self._next_id = next_id + len(first)
        self._committed(sum(len(row[3]) + len(row[4]) for row in rows))
        return _put_outcomes(puts, first, wanted)

    def _run_call(self, op: _Call) -> _Outcome:
        try:
            return op.future, op.fn(self._connection()), None
        except Exception as exc:
            return op.future, None, self._translate(exc)

    def _commit(
        self, batch: list[_Write], begun: _Begun | None = None
    ) -> tuple[list[_Outcome], set[str]]:
        """Run a group of writes in one transaction and one commit; what to resolve afterwards.

        With ``begun``, the transaction is the one the loop opened (its puts already inserted):
        the other writes join it, then it is committed.
        """
        # Rows of puts (their bodies) are most of what a commit writes; other writes, a page.
        self._committed(
            sum(
                len(op.row.body) if isinstance(op, QueuedPut) else 4096
                for op in (*(begun.ops if begun else ()), *batch)
            )
        )
        try:
            conn = self._connection()
            if begun is None:
                outcomes, woken = _transaction(conn, lambda c: _write_group(c, batch))
            else:
                outcomes, woken = _finish_transaction(conn, lambda c: _write_group(c, batch))
                outcomes = begun.outcomes + outcomes
                woken |= begun.woken
        except Exception as exc:
            whole: list[_Write] = [*(begun.ops if begun else ()), *batch]
            if len(whole) > 1 and not unavailable(exc):
                # Not the disk but one write's fault: run each alone, so only that one fails.
                outcomes, woken = [], set()
                for op in whole:
                    done, wakes = self._commit([op])
                    outcomes += done
                    woken |= wakes
                return outcomes, woken
            error = self._translate(exc)
            return [(op.future, None, error) for op in whole], set()
        return outcomes, woken

    def _translate(self, exc: Exception) -> Exception:
        if not unavailable(exc):
            return exc
        self._disconnect()  # reopened by the next operation, in case the file was the problem
        # SQLite's messages name no file ("disk I/O error"), so they are safe in a 503's body.
        error = StoreUnavailable(f"SQLite job store unavailable: {exc}")
        error.__cause__ = exc
        return error

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        # Used by the event loop's thread too (``_begin``), but never by both at once.
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            cached_statements=64,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if self._checkpointer is not None:
                conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
            # Not executescript: it commits first, and this must run inside BEGIN IMMEDIATE so
            # that two processes opening a new file do not race to create the same table.
            _transaction(conn, _create_schema)
            conn.execute(PUT_VIEW)  # this connection's own (temp): the file is not changed
            conn.execute(PUT_TRIGGER)
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL, waiting up to ``busy_timeout`` for other processes."""
        # Switching needs an exclusive lock, and when another process opening the same new file
        # holds a shared one SQLite answers "locked" at once instead of calling the busy handler.
        deadline = time.monotonic() + self.busy_timeout
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) & 0xFF
                if code != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


class _Checkpointer:
    """Passive WAL checkpoints on a thread and connection of their own, when asked.

    Off the commit path: with SQLite's automatic checkpoint, every tenth commit or so copied
    the WAL into the database and fsynced it inside the commit, on the store's one thread, and
    the next group waited for it. A passive checkpoint takes no lock a writer needs (it copies
    the frames committed when it started, and the writer restarts the WAL once all are copied),
    and durability does not depend on it: every commit fsynced its frames to the WAL already.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"jobs-sqlite-checkpoint:{path}", daemon=True
        )
        self._thread.start()

    def request(self) -> None:
        """Checkpoint soon (requests made meanwhile are one)."""
        self._wanted.set()

    def stop(self) -> None:
        """End the thread, after the checkpoint it may be running."""
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                break
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                # Another process's checkpoint, or the file is unwell: the store reports that
                # on its own; the next request tries again, and the backstop bounds the WAL.
                with contextlib.suppress(sqlite3.Error):
                    if conn is not None:
                        conn.close()
                conn = None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` between ``BEGIN IMMEDIATE`` and ``COMMIT``; roll back if anything fails."""
    conn.execute("BEGIN IMMEDIATE")
    return _finish_transaction(conn, fn)


def _finish_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in the transaction already open, then ``COMMIT``; roll back on failure."""
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # A failed rollback leaves a connection that the error's handler drops anyway.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _write_group(conn: sqlite3.Connection, batch: list[_Write]) -> tuple[list[_Outcome], set[str]]:
    """Every write of a group, inside its transaction; the outcomes to deliver after COMMIT."""
    puts = [op for op in batch if isinstance(op, QueuedPut)]
    succeeds = [op for op in batch if isinstance(op, QueuedSuccess)]
    outcomes: list[_Outcome] = []
    woken: set[str] = set()
    if puts:
        results = _insert_puts(conn, [op.row for op in puts])
        for queued, put in zip(puts, results, strict=True):
            outcomes.append((queued.future, put, None))
            if put.created:
                woken.update(job.queue for job in queued.row.jobs)
    if succeeds:
        done, finished = _finish(conn, succeeds)
        outcomes.extend((s.future, ok, None) for s, ok in zip(succeeds, done, strict=True))
        woken |= finished
    for op in batch:
        if isinstance(op, _Call):
            outcomes.append((op.future, op.fn(conn), None))
    return outcomes, woken


def _bucket(rows: int) -> int:
    """``rows`` rounded up to a power of two (at most ``CHUNK``)."""
    return 1 << max(rows - 1, 0).bit_length()


def _values(width: int, rows: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * rows)


@functools.cache
def _insert_messages(rows: int) -> str:
    return (
        "INSERT INTO messages (id, stream, key, body, meta, created_at)"
        f" SELECT * FROM (VALUES {_values(6, rows)}) WHERE column1 IS NOT NULL"
        " ON CONFLICT (stream, key) DO NOTHING"
    )


@functools.cache
def _insert_jobs(rows: int) -> str:
    # Ordered by position: job ids must follow put order, which orders an ordering key's jobs.
    return (
        "INSERT INTO jobs (message_id, queue, task, status, run_at, ordering_key, created_at,"
        " updated_at)"
        " SELECT column1, column2, column3, 'pending', column4, column5, column6, column6"
        f" FROM (VALUES {_values(7, rows)}) WHERE column1 IS NOT NULL ORDER BY column7"
        " ON CONFLICT (message_id, queue, task) DO NOTHING"
    )


@functools.cache
def _held_jobs(rows: int) -> str:
    # Padding rows have a NULL id and match nothing.
    return (
        f"WITH u (id, owner, attempt) AS (VALUES {_values(3, rows)})"
        " SELECT json_group_array(json_array(j.id, j.queue, j.ordering_key))"
        " FROM u JOIN jobs AS j ON j.id = u.id AND j.owner = u.owner"
        " AND j.status = 'running' AND (u.attempt IS NULL OR j.attempts = u.attempt)"
    )


@functools.cache
def _succeed_jobs(rows: int) -> str:
    return (
        f"WITH u (id, now) AS (VALUES {_values(2, rows)})"
        " UPDATE jobs SET status = 'succeeded', lease_until = NULL, updated_at = u.now"
        " FROM u WHERE jobs.id = u.id"
    )


def _chunks(items: list[tuple[Any, ...]], width: int) -> Iterator[tuple[int, list[Any]]]:
    """Parameter lists of at most ``CHUNK`` rows each, padded to a power of two with NULLs."""
    for start in range(0, len(items), CHUNK):
        part = items[start : start + CHUNK]
        rows = _bucket(len(part))
        flat = [value for item in part for value in item]
        flat.extend([None] * (width * (rows - len(part))))
        yield rows, flat


def _insert_puts(conn: sqlite3.Connection, rows: list[Row]) -> list[Put]:
    """Insert messages and their jobs with a few statements, whatever the count."""
    first: dict[tuple[str, str], int] = {}  # (stream, key) -> its first row's position
    for i, row in enumerate(rows):
        first.setdefault((row.stream, row.key), i)
    (next_id,) = conn.execute(NEXT_MESSAGE_ID).fetchone()
    wanted = {pair: next_id + n for n, pair in enumerate(first)}
    messages = [
        (wanted[pair], row.stream, row.key, row.body, row.meta, row.now)
        for pair, i in first.items()
        for row in (rows[i],)
    ]
    stored = 0
    for count, params in _chunks(messages, 6):
        stored += conn.execute(_insert_messages(count), params).rowcount
    ids = wanted
    created = set(wanted)
    if stored < len(wanted):
        # Some were there already (a retry, or another process's copy): look every one up.
        keys = orjson.dumps(list(wanted)).decode()
        (found,) = conn.execute(FIND_MESSAGES, (keys,)).fetchone()
        ids = {(stream, key): message_id for message_id, stream, key in orjson.loads(found)}
        created = {pair for pair, message_id in ids.items() if wanted[pair] == message_id}
    jobs: list[tuple[Any, ...]] = []
    for pair, i in first.items():
        if pair in created:
            row = rows[i]
            jobs.extend(
                (
                    ids[pair],
                    j.queue,
                    j.task,
                    row.now + j.delay,
                    j.ordering_key,
                    row.now,
                    len(jobs) + n,
                )
                for n, j in enumerate(row.jobs)
            )
    for count, params in _chunks(jobs, 7):
        conn.execute(_insert_jobs(count), params)
    results: list[Put] = []
    for i, row in enumerate(rows):
        pair = (row.stream, row.key)
        results.append(Put(ids[pair], created=first[pair] == i and pair in created))
    return results


def _put_outcomes(
    puts: list[QueuedPut], first: dict[tuple[str, str], int], ids: dict[tuple[str, str], int]
) -> tuple[list[_Outcome], set[str]]:
    """What each put of a fast-path statement did (its first copy created); queues to wake."""
    outcomes: list[_Outcome] = []
    woken: set[str] = set()
    for i, op in enumerate(puts):
        pair = (op.row.stream, op.row.key)
        new = first[pair] == i  # a second copy in the same group is a duplicate
        outcomes.append((op.future, Put(ids[pair], created=new), None))
        if new:
            woken.update(job.queue for job in op.row.jobs)
    return outcomes, woken


def _drain(box: collections.deque[QueuedPut], limit: int) -> list[QueuedPut]:
    """Up to ``limit`` puts from the left of ``box`` (the loop may append meanwhile)."""
    taken: list[QueuedPut] = []
    while len(taken) < limit:
        try:
            taken.append(box.popleft())
        except IndexError:
            break
    return taken


@functools.lru_cache(maxsize=256)
def _jobs_json(jobs: tuple[NewJob, ...]) -> str:
    """A message's jobs as the JSON array ``PUT_TRIGGER`` reads: [queue, task, delay, key]."""
    return orjson.dumps([[j.queue, j.task, j.delay, j.ordering_key] for j in jobs]).decode()


@functools.cache
def _put_rows(rows: int) -> str:
    # Ordered by id, which follows put order: the trigger then inserts jobs in put order.
    return (
        f"INSERT INTO put_rows SELECT * FROM (VALUES {_values(7, rows)})"
        " WHERE column1 IS NOT NULL ORDER BY column1"
    )


def _finish(conn: sqlite3.Connection, ops: list[QueuedSuccess]) -> tuple[list[bool], set[str]]:
    """Mark the jobs whose lease is still held succeeded: one ``SELECT`` and one ``UPDATE``."""
    held: dict[int, tuple[str, str | None]] = {}
    asked = [(op.job_id, op.owner, op.attempt) for op in ops]
    for count, params in _chunks(asked, 3):
        (found,) = conn.execute(_held_jobs(count), params).fetchone()
        held.update({job_id: (queue, key) for job_id, queue, key in orjson.loads(found)})
    done: list[bool] = []
    updates: dict[int, float] = {}
    for op in ops:
        # A second call for the same job in the same group finds it no longer running.
        first = op.job_id in held and op.job_id not in updates
        if first:
            updates[op.job_id] = op.now
        done.append(first)
    for count, params in _chunks(list(updates.items()), 2):
        conn.execute(_succeed_jobs(count), params)
    # A success lets the next job of its ordering key run.
    woken = {held[job_id][0] for job_id in updates if held[job_id][1] is not None}
    return done, woken


def _check_budget(limit: int, window: float) -> None:
    if limit < 1 or not window > 0:
        raise ValueError(f"a budget needs limit >= 1 and window > 0, not {limit} per {window}")


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
