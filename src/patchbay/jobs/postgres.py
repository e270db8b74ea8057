"""The job store in PostgreSQL, shared by every worker of every Patchbay instance that uses it.

- **Own schema.** The tables live in one schema (``patchbay`` by default), created if missing
  under an advisory lock so that instances starting together do not race on the DDL.
- **Claims** lock the chosen rows with ``FOR UPDATE SKIP LOCKED`` and lease them in the same
  statement, so concurrent claimers in any number of processes never get the same job and never
  wait for one another. The ordering rule (a job waits for every earlier pending or running job of
  its queue, task and ordering key) is a ``NOT EXISTS`` on a partial index of active jobs.
- **Group commit.** Concurrent puts are queued to one batching task, which writes every put
  waiting when it becomes free in one transaction and one commit; each put resolves only after
  that commit. Without ordering keys the transaction is one statement over arrays (messages,
  jobs and the wake-up notice together: one round trip, whatever the batch size), on a
  connection of the batcher's own, so it never queues behind other calls for the pool. Messages
  are inserted in ``(stream, key)`` order, so two instances' batches wait on each other's unique
  keys in the same order and cannot deadlock. ``succeed`` calls are batched the same way (one
  ``UPDATE`` over arrays per batch, through the pool).
- **No reset round trip.** asyncpg resets a pooled connection on every release (one more round
  trip and transaction per call). The store keeps no session state in pooled connections (its
  advisory locks are transaction-level, LISTEN has its own connection), so its pool's reset does
  nothing beyond asyncpg's own rollback of an unfinished transaction.
- **Plans.** The pool's sessions plan every statement for its parameters
  (``plan_cache_mode=force_custom_plan``): the tables grow from empty to many thousand rows in
  seconds, and a generic plan cached while they were small keeps scanning them whole.
- **Ordering across instances.** Job ids, not commit order, decide which job of an ordering key
  runs first, so a put that creates jobs with an ordering key first takes a transaction-level
  advisory lock per key: ids of one key are then handed out in commit order, and no claimer can
  see a later job of a key before an earlier one.
- **Waking.** Every transaction that makes jobs runnable sends ``NOTIFY`` on the schema's channel
  with the queue name; a dedicated listening connection sets this instance's per-queue event, so
  a put in another instance wakes this one's waiters. If that connection is lost, waiters fall
  back to their poll timeout until it is opened again.
- **Shared state.** Values, locks and rate budgets live in tables of the same schema, so every
  worker of every instance shares one token cache, one lock and one budget. A lock is one
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` (the row lock makes it atomic); a budget's
  check and record run under a transaction-level advisory lock on the bucket.
- **Time** is the injected clock's, stored as double precision epoch seconds, never the
  database server's, so every instance and the tests agree on one notion of "now".
- **Errors.** Connection loss, timeouts, and the server's "cannot do it now" classes (connection,
  insufficient resources, operator intervention, system errors, serialisation failures, lock
  timeouts, read-only standby) become ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
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
from patchbay.jobs.store import PURGE_BATCH, Row, StoreUnavailable, Value, check_budget

MAX_BATCH: Final = 1024
IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,47}")
ACTIVE: Final = "('pending', 'running')"
# SQLSTATE classes (or codes) meaning "not now" rather than "this request is wrong".
UNAVAILABLE_STATES: Final = (
    "08",
    "53",
    "57",
    "58",
    "40001",
    "40P01",
    "55P03",
    "25006",
    "3D000",
    "28",
)
SCHEMA_LOCK: Final = 0x7062_6A6F_6273  # any constant: serialises schema creation


def unavailable(exc: BaseException) -> bool:
    """Whether an exception from asyncpg means the database cannot be used right now."""
    if isinstance(exc, StoreUnavailable | OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith(UNAVAILABLE_STATES)
    return False


def _describe(what: str, exc: BaseException) -> str:
    """Why the store is unavailable, without the server's address or file names.

    The message may reach an HTTP client (a 503's body); the full error stays in ``__cause__``.
    """
    state = getattr(exc, "sqlstate", None)
    why = f"{type(exc).__name__} {state}" if state else type(exc).__name__
    return f"PostgreSQL job store unavailable ({what}): {why}"


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn the errors that mean "unavailable" into ``StoreUnavailable``."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if unavailable(exc):
            raise StoreUnavailable(_describe(what, exc)) from exc
        raise


class PostgresStore:
    """The job store in a PostgreSQL schema, shared safely by many instances."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        pool_size: int = 4,
        schema: str = "patchbay",
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        if not IDENTIFIER.fullmatch(schema):
            raise ValueError(f"schema must be a lower-case SQL identifier, not {schema!r}")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.url = url
        self.clock = clock
        self.pool_size = pool_size
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.channel = f"{schema}_jobs"
        # Named so that an operator (or a test) can tell this store's sessions apart.
        self._settings = {"application_name": f"patchbay-jobs:{schema}"}
        self._sql = _Statements(schema)
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._relisten: asyncio.Task[None] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._queued: list[QueuedPut] = []
        self._more = asyncio.Event()
        self._writer: asyncpg.Connection | None = None  # the put batcher's own connection
        self._finisher: asyncio.Task[None] | None = None
        self._succeeds: list[QueuedSuccess] = []
        self._more_succeeds = asyncio.Event()
        self._closing = False
        self._events: dict[str, asyncio.Event] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the schema if it is missing, and start listening for wake-ups."""
        if self._pool is not None:
            return
        self._closing = False
        with translated("open"):
            pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                # Custom plans: the tables grow from nothing to many thousand rows in seconds,
                # and a generic plan made while they were small (cached for the connection's
                # life; no ANALYZE invalidates it without autovacuum) scans all the active jobs
                # for every success batch (measured: 4.2 ms at 50k pending instead of 0.2).
                server_settings={**self._settings, "plan_cache_mode": "force_custom_plan"},
                reset=_no_reset,
            )
        self._pool = pool
        try:
            with translated("create schema"):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                    await conn.execute(self._sql.schema)
            await self._listen()
        except BaseException:
            await self.close()
            raise
        self._batcher = asyncio.create_task(self._batch_puts(), name="jobs-postgres-puts")
        self._finisher = asyncio.create_task(self._batch_succeeds(), name="jobs-postgres-succeeds")

    async def close(self) -> None:
        """Commit every put and success already queued, then release every connection."""
        self._closing = True
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            self._more.set()
            await batcher
        finisher, self._finisher = self._finisher, None
        if finisher is not None:
            self._more_succeeds.set()
            await finisher
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.close(), self.connect_timeout)
            writer.terminate()  # a no-op when close() worked
        relisten, self._relisten = self._relisten, None
        if relisten is not None:
            relisten.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relisten
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), self.connect_timeout)
            listener.terminate()  # a no-op when close() worked
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.connect_timeout)
            except Exception:
                pool.terminate()

    # -- the contract ------------------------------------------------------------------------

    async def put(self, message: Message) -> Put:
        """Store a message and its jobs, unless ``(stream, key)`` exists: then change nothing."""
        self._open_pool()
        if self._closing:
            raise StoreUnavailable("PostgreSQL job store is closing")
        # Serialised here so that a bad message fails alone, before it joins a shared commit.
        row = Row.of(message, self.clock())
        future: asyncio.Future[Put] = asyncio.get_running_loop().create_future()
        self._queued.append(QueuedPut(row, future))
        self._more.set()
        return await future

    async def claim(self, queue: str, owner: str, *, limit: int, lease: float) -> list[Claim]:
        """Lease up to ``limit`` runnable jobs of ``queue`` to ``owner`` (see ``Store.claim``)."""
        if limit < 1:
            return []
        now = self.clock()
        until = now + lease
        pool = self._open_pool()
        with translated("claim"):
            rows = await pool.fetch(self._sql.claim, queue, now, limit, owner, until)
        claims = [Claim(_job(r), _message(r, offset=11), until) for r in rows]
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
        pool = self._open_pool()
        with translated("extend"):
            status = await pool.execute(self._sql.extend, now + lease, now, job_id, owner, attempt)
        return _affected(status) > 0

    async def succeed(self, job_id: int, owner: str, *, attempt: int | None = None) -> bool:
        """Mark a job succeeded, if ``owner`` still holds its lease (and ``attempt`` matches)."""
        self._open_pool()
        if self._closing:
            raise StoreUnavailable("PostgreSQL job store is closing")
        # Queued like a put: the successes waiting together share one statement.
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._succeeds.append(QueuedSuccess(job_id, owner, attempt, self.clock(), future))
        self._more_succeeds.set()
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
        pool = self._open_pool()
        with translated("fail"):
            row = await pool.fetchrow(
                self._sql.fail, status, run_at, error, now, job_id, owner, attempt, self.channel
            )
        if row is None:
            return False
        # Due at once, or dead and so no longer holding back the next job of its key.
        if (run_at is not None and run_at <= now) or (
            run_at is None and row["ordering_key"] is not None
        ):
            self._wake([row["queue"]])
        return True

    async def replay(self, selection: Selection) -> int:
        """Make the selected jobs that are not running pending again, due now; return how many."""
        now = self.clock()
        where, args = _where(selection, first=4)
        sql = self._sql.replay.format(where=where)
        pool = self._open_pool()
        with translated("replay"):
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(sql, now, now, self.channel, *args)
        queues = {row["queue"] for row in rows}
        self._wake(queues)
        return sum(row["n"] for row in rows)

    async def drop(self, selection: Selection) -> int:
        """Delete the selected jobs that are not running; return how many."""
        where, args = _where(selection, first=1)
        pool = self._open_pool()
        with translated("drop"):
            status = await pool.execute(self._sql.drop.format(where=where), *args)
        return _affected(status)

    async def purge(self, before: float, *, batch: int = PURGE_BATCH) -> int:
        """Delete old messages whose jobs have all ended (see ``Store.purge``)."""
        pool = self._open_pool()
        total, start = 0, 0
        while True:  # one short statement per window
            try:
                with translated("purge"):
                    row = await pool.fetchrow(self._sql.purge, start, batch, before)
            except asyncpg.ForeignKeyViolationError:
                continue  # a job of this window was replayed meanwhile: look at it again
            assert row is not None  # an aggregate always answers one row
            total += row["deleted"]
            if row["seen"] < batch or row["newer"]:
                return int(total)
            start = row["last"] + 1

    async def jobs(self, selection: Selection, *, limit: int = 100) -> list[Job]:
        """The selected jobs, newest first."""
        where, args = _where(selection, first=2)
        pool = self._open_pool()
        with translated("jobs"):
            rows = await pool.fetch(self._sql.jobs.format(where=where), limit, *args)
        return [_job(r) for r in rows]

    async def message(self, message_id: int) -> StoredMessage | None:
        """One stored message."""
        pool = self._open_pool()
        with translated("message"):
            row = await pool.fetchrow(self._sql.message, message_id)
        return None if row is None else _message(row, offset=0)

    async def counts(self, queue: str | None = None) -> dict[Status, int]:
        """How many jobs are in each status (every status present, zero if none)."""
        pool = self._open_pool()
        with translated("counts"):
            rows = await pool.fetch(self._sql.counts, queue)
        counts = dict.fromkeys(Status, 0)
        counts.update({Status(r["status"]): int(r["n"]) for r in rows})
        return counts

    async def wait(self, queue: str, seconds: float) -> None:
        """Return when any instance made jobs of ``queue`` runnable, or after ``seconds``."""
        if self._listener is None or self._listener.is_closed():
            self._listen_again()
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
        pool = self._open_pool()
        with translated("get value"):
            row = await pool.fetchrow(self._sql.get_value, key, self.clock())
        return None if row is None else Value(bytes(row["data"]), row["expires_at"])

    async def set_value(self, key: str, data: bytes, *, expires_at: float | None = None) -> None:
        """Store ``data`` under ``key`` (replacing any), until ``expires_at`` if given."""
        pool = self._open_pool()
        with translated("set value"):
            await pool.execute(self._sql.set_value, key, bytes(data), expires_at, self.clock())

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lock ``name`` for ``ttl`` seconds if it is free, expired or already ours."""
        now = self.clock()
        pool = self._open_pool()
        with translated("acquire"):
            row = await pool.fetchrow(self._sql.acquire, name, owner, now + ttl, now)
        return row is not None

    async def release(self, name: str, owner: str) -> None:
        """Free the lock ``name`` if ``owner`` holds it."""
        pool = self._open_pool()
        with translated("release"):
            await pool.execute(self._sql.release, name, owner)

    async def take(self, bucket: str, limit: int, window: float) -> float:
        """Spend one call from a sliding-window budget (see ``Store.take``)."""
        check_budget(limit, window)
        now = self.clock()
        # A call made at ``at`` is in the window while ``at > horizon``; ``at - horizon`` is then
        # its time left, and positive even after rounding, unlike ``at + window - now``.
        horizon = now - window
        pool = self._open_pool()
        with translated("take"):
            async with pool.acquire() as conn, conn.transaction():
                # A statement of its own: a READ COMMITTED statement reads the snapshot taken
                # when it began, so the check must start after the lock is held.
                await conn.execute(self._sql.lock_key, self._bucket_lock_id(bucket))
                blocking = await conn.fetchval(self._sql.take, bucket, horizon, now, limit)
        return 0.0 if blocking is None else float(blocking) - horizon

    # -- internals ---------------------------------------------------------------------------

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("PostgreSQL job store is not open")
        return self._pool

    def _event(self, queue: str) -> asyncio.Event:
        event = self._events.get(queue)
        if event is None:
            event = self._events[queue] = asyncio.Event()
        return event

    def _wake(self, queues: Iterable[str]) -> None:
        for queue in queues:
            self._event(queue).set()

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._wake([str(payload)])

    def _listener_lost(self, conn: Any) -> None:
        self._listener = None

    async def _listen(self) -> None:
        with translated("listen"):
            conn: asyncpg.Connection = await asyncpg.connect(
                self.url, timeout=self.connect_timeout, server_settings=self._settings
            )
        try:
            with translated("listen"):
                await conn.add_listener(self.channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn

    def _listen_again(self) -> None:
        """Reopen the listening connection in the background, once at a time."""
        if self._closing or (self._relisten is not None and not self._relisten.done()):
            return

        async def relisten() -> None:
            with contextlib.suppress(StoreUnavailable):
                await self._listen()

        self._relisten = asyncio.create_task(relisten(), name="jobs-postgres-listen")

    async def _batch_puts(self) -> None:
        """The batching task: every put waiting when it becomes free goes into one commit."""
        while True:
            await self._more.wait()
            self._more.clear()
            while self._queued:
                batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
                # A put whose caller was cancelled before its batch began is not written.
                batch = [op for op in batch if not op.future.done()]
                if batch:
                    await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[QueuedPut]) -> None:
        try:
            results = await self._write_puts([op.row for op in batch])
        except Exception as exc:
            if len(batch) > 1 and not unavailable(exc):
                # Not the database but one message's fault: commit the others without it.
                for op in batch:
                    await self._commit([op])
                return
            error: Exception = exc
            if unavailable(exc) and not isinstance(exc, StoreUnavailable):
                error = StoreUnavailable(_describe("put", exc))
                error.__cause__ = exc
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        woken: set[str] = set()
        for op, put in zip(batch, results, strict=True):
            if put.created:
                woken.update(job.queue for job in op.row.jobs)
            if not op.future.done():
                op.future.set_result(put)
        self._wake(woken)

    async def _write_puts(self, rows: list[Row]) -> list[Put]:
        """Store a batch of puts in one transaction; on a lost connection, drop it."""
        conn = await self._writer_connection()
        try:
            if any(job.ordering_key is not None for row in rows for job in row.jobs):
                created = await self._write_ordered_puts(conn, rows)
            else:
                created = await self._write_unordered_puts(conn, rows)
        except Exception as exc:
            if unavailable(exc):
                self._writer = None
                conn.terminate()  # opened again by the next batch
            raise
        first: dict[tuple[str, str], int] = {}  # the put whose row went in, per key
        for i, row in enumerate(rows):
            first.setdefault((row.stream, row.key), i)
        ids = dict(created)
        missing = [pair for pair in first if pair not in created]
        if missing:
            # Stored before (a retry, or another instance's copy), and committed: ON CONFLICT
            # waits for a concurrent insert's end. Looked up through the pool, whose custom
            # plans use the unique index however much the table grew since it was planned.
            found = await self._open_pool().fetch(
                self._sql.find_messages, [p[0] for p in missing], [p[1] for p in missing]
            )
            ids.update({(r["stream"], r["key"]): int(r["id"]) for r in found})
        return [
            Put(ids[pair], created=pair in created and first[pair] == i)
            for i, row in enumerate(rows)
            for pair in ((row.stream, row.key),)
        ]

    async def _writer_connection(self) -> asyncpg.Connection:
        # Generic plans kept here (unlike the pool): its statements insert from arrays and never
        # scan a table, and planning the one statement again per batch cost 5-13 µs a put.
        conn = self._writer
        if conn is None or conn.is_closed():
            with translated("connect"):
                conn = await asyncpg.connect(
                    self.url,
                    timeout=self.connect_timeout,
                    command_timeout=self.command_timeout,
                    server_settings=self._settings,
                )
            self._writer = conn
        return conn

    async def _write_unordered_puts(
        self, conn: asyncpg.Connection, rows: list[Row]
    ) -> dict[tuple[str, str], int]:
        """One statement (so one transaction and one round trip): messages, jobs, notice.

        Returns the ids of the messages it inserted, by ``(stream, key)``.
        """
        order = sorted(range(len(rows)), key=lambda i: (rows[i].stream, rows[i].key))
        first: dict[tuple[str, str], int] = {}
        for i, row in enumerate(rows):
            first.setdefault((row.stream, row.key), i)
        # Jobs of each key's first put only, in put order (job ids follow it).
        jobs = [
            (row, job)
            for i, row in enumerate(rows)
            if first[row.stream, row.key] == i
            for job in row.jobs
        ]
        inserted = await conn.fetch(
            self._sql.put_many,
            [rows[i].stream for i in order],
            [rows[i].key for i in order],
            [rows[i].body for i in order],
            [rows[i].meta for i in order],
            [rows[i].now for i in order],
            [row.stream for row, _ in jobs],
            [row.key for row, _ in jobs],
            [job.queue for _, job in jobs],
            [job.task for _, job in jobs],
            [row.now + job.delay for row, job in jobs],
            [row.now for row, _ in jobs],
            self.channel,
        )
        return {(r["stream"], r["key"]): int(r["id"]) for r in inserted}

    async def _write_ordered_puts(
        self, conn: asyncpg.Connection, rows: list[Row]
    ) -> dict[tuple[str, str], int]:
        """One transaction: lock ordering keys, insert messages and their jobs, notify.

        Returns the ids of the messages it inserted, by ``(stream, key)``.
        """
        order = sorted(range(len(rows)), key=lambda i: (rows[i].stream, rows[i].key))
        locks = sorted(
            {self._lock_id(job) for row in rows for job in row.jobs if job.ordering_key is not None}
        )
        async with conn.transaction():
            if locks:
                await conn.fetch(self._sql.lock_keys, locks)
            inserted = await conn.fetch(
                self._sql.insert_messages,
                [rows[i].stream for i in order],
                [rows[i].key for i in order],
                [rows[i].body for i in order],
                [rows[i].meta for i in order],
                [rows[i].now for i in order],
            )
            created = {(r["stream"], r["key"]): int(r["id"]) for r in inserted}
            unclaimed = dict(created)
            jobs: list[tuple[int, NewJob, float]] = []
            for row in rows:
                # The first put of a key in the batch is the one whose row went in (the sort
                # was stable); a later one of the same key is a duplicate of it.
                message_id = unclaimed.pop((row.stream, row.key), None)
                if message_id is not None:
                    jobs.extend((message_id, job, row.now) for job in row.jobs)
            if jobs:
                await conn.execute(
                    self._sql.insert_jobs,
                    [m for m, _, _ in jobs],
                    [j.queue for _, j, _ in jobs],
                    [j.task for _, j, _ in jobs],
                    [now + j.delay for _, j, now in jobs],
                    [j.ordering_key for _, j, _ in jobs],
                    [now for _, _, now in jobs],
                )
                await conn.execute(
                    self._sql.notify, self.channel, sorted({j.queue for _, j, _ in jobs})
                )
        return created

    async def _batch_succeeds(self) -> None:
        """The successes' batching task: every success waiting goes into one statement."""
        while True:
            await self._more_succeeds.wait()
            self._more_succeeds.clear()
            while self._succeeds:
                batch = self._succeeds[:MAX_BATCH]
                self._succeeds = self._succeeds[MAX_BATCH:]
                await self._finish(batch)
            if self._closing:
                return

    async def _finish(self, batch: list[QueuedSuccess]) -> None:
        # A second success of the same job in one batch finds it no longer running: False.
        first: dict[int, QueuedSuccess] = {}
        for op in batch:
            first.setdefault(op.job_id, op)
        ops = list(first.values())
        try:
            pool = self._open_pool()
            with translated("succeed"):
                # The notice lets the next job of an ordering key run at once.
                rows = await pool.fetch(
                    self._sql.succeed_many,
                    [op.job_id for op in ops],
                    [op.owner for op in ops],
                    [op.attempt for op in ops],
                    [op.now for op in ops],
                    self.channel,
                )
        except Exception as exc:
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(exc)
            return
        done = {row["id"]: row for row in rows}
        self._wake({row["queue"] for row in rows if row["ordering_key"] is not None})
        for op in batch:
            if not op.future.done():
                op.future.set_result(op.job_id in done and first[op.job_id] is op)

    def _lock_id(self, job: NewJob) -> int:
        name = "\0".join((self.schema, job.queue, job.task, job.ordering_key or ""))
        return _advisory_key(name)

    def _bucket_lock_id(self, bucket: str) -> int:
        # The ':' cannot occur in a schema name, so this never names an ordering key's lock.
        return _advisory_key(f"calls:{self.schema}\0{bucket}")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing to undo (see the module's docstring)."""


def _advisory_key(name: str) -> int:
    """A 64-bit advisory lock key for a name."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(slots=True)
class QueuedPut:
    """A put waiting for the next group commit, and the future its caller awaits."""

    row: Row
    future: asyncio.Future[Put]


@dataclass(slots=True)
class QueuedSuccess:
    """A ``succeed`` waiting for the next batch, and the future its caller awaits."""

    job_id: int
    owner: str
    attempt: int | None
    now: float
    future: asyncio.Future[bool]


class _Statements:
    """The store's SQL, with its schema's name filled in."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        job_columns = (
            "j.id, j.message_id, j.queue, j.task, j.status, j.attempts, j.run_at,"
            " j.ordering_key, j.last_error, j.created_at, j.updated_at"
        )
        message_columns = "m.id, m.stream, m.key, m.body, m.meta::text, m.created_at"
        # Bodies (a webhook's is often 5-50 KB) are compressed with lz4 where the server has
        # it (PostgreSQL 14+ built with lz4): pglz was most of the database's CPU per put
        # (measured: 58 µs per 8.7 KB row with pglz, 21 with lz4, 28 stored uncompressed).
        # Older or lz4-less servers keep pglz; the check spares the table's lock when it is set.
        self.schema = f"""
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream text NOT NULL,
    key text NOT NULL,
    body bytea NOT NULL,
    meta jsonb NOT NULL,
    created_at double precision NOT NULL,
    UNIQUE (stream, key)
);
CREATE TABLE IF NOT EXISTS {s}.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id bigint NOT NULL REFERENCES {s}.messages (id),
    queue text NOT NULL,
    task text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    run_at double precision NOT NULL,
    ordering_key text,
    owner text,
    lease_until double precision,
    last_error text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    UNIQUE (message_id, queue, task)
);
CREATE INDEX IF NOT EXISTS jobs_due ON {s}.jobs (queue, run_at, id) WHERE status IN {ACTIVE};
CREATE INDEX IF NOT EXISTS jobs_order ON {s}.jobs (queue, task, ordering_key, id)
    WHERE status IN {ACTIVE} AND ordering_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status ON {s}.jobs (queue, status);
CREATE TABLE IF NOT EXISTS {s}.kv (
    key text PRIMARY KEY,
    data bytea NOT NULL,
    expires_at double precision
);
CREATE TABLE IF NOT EXISTS {s}.locks (
    name text PRIMARY KEY,
    owner text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.calls (
    bucket text NOT NULL,
    at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_bucket ON {s}.calls (bucket, at);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{s}.messages'::regclass
            AND attname = 'body' AND attcompression <> 'l') THEN
        EXECUTE 'ALTER TABLE {s}.messages ALTER COLUMN body SET COMPRESSION lz4';
    END IF;
EXCEPTION WHEN feature_not_supported OR undefined_column OR syntax_error THEN
    NULL;
END
$$;
"""
        self.lock_keys = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"
        self.lock_key = "SELECT pg_advisory_xact_lock($1::bigint)"
        self.get_value = f"""
SELECT data, expires_at FROM {s}.kv WHERE key = $1 AND (expires_at IS NULL OR expires_at > $2)
"""
        # Expired values are dropped on the way, so keys that are never set again do not pile
        # up. SKIP LOCKED: the clean-up never waits, so it cannot deadlock with another set;
        # ``key`` itself is left to the upsert, as one statement may not change a row twice.
        self.set_value = f"""
WITH expired AS (
    DELETE FROM {s}.kv WHERE key IN (
        SELECT key FROM {s}.kv WHERE expires_at <= $4 AND key <> $1 FOR UPDATE SKIP LOCKED))
INSERT INTO {s}.kv (key, data, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (key) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at
"""
        # The conflicting row is locked and the WHERE checked on its latest version, so of two
        # racing owners exactly one gets a row back.
        self.acquire = f"""
INSERT INTO {s}.locks AS l (name, owner, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE l.owner = excluded.owner OR l.expires_at <= $4
RETURNING 1
"""
        self.release = f"DELETE FROM {s}.locks WHERE name = $1 AND owner = $2"
        # Run under the bucket's advisory lock. The call that has to leave the window before
        # another fits is the ``limit``-th newest; without one, the call is recorded. Every part
        # reads the statement's one snapshot, so the old calls' deletion does not hide them
        # from the check (which skips them anyway).
        self.take = f"""
WITH pruned AS (DELETE FROM {s}.calls WHERE bucket = $1 AND at <= $2),
blocking AS (
    SELECT at FROM {s}.calls WHERE bucket = $1 AND at > $2
    ORDER BY at DESC LIMIT 1 OFFSET $4::int - 1
),
recorded AS (
    INSERT INTO {s}.calls (bucket, at)
    SELECT $1, $3 WHERE NOT EXISTS (SELECT 1 FROM blocking)
)
SELECT at FROM blocking
"""
        # Rows go in in array order, which the caller sorted by (stream, key).
        self.insert_messages = f"""
INSERT INTO {s}.messages (stream, key, body, meta, created_at)
SELECT u.stream, u.key, u.body, u.meta::jsonb, u.created_at
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::float8[])
    AS u(stream, key, body, meta, created_at)
ON CONFLICT (stream, key) DO NOTHING
RETURNING id, stream, key
"""
        self.find_messages = f"""
SELECT m.id, m.stream, m.key FROM {s}.messages AS m
JOIN unnest($1::text[], $2::text[]) AS u(stream, key) ON m.stream = u.stream AND m.key = u.key
"""
        # Ordered by position so that ids follow put order, which orders an ordering key's jobs.
        self.insert_jobs = f"""
INSERT INTO {s}.jobs (message_id, queue, task, status, run_at, ordering_key, created_at,
    updated_at)
SELECT u.message_id, u.queue, u.task, 'pending', u.run_at, u.ordering_key, u.now, u.now
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::text[], $6::float8[])
    WITH ORDINALITY AS u(message_id, queue, task, run_at, ordering_key, now, n)
ORDER BY u.n
ON CONFLICT (message_id, queue, task) DO NOTHING
"""
        self.notify = "SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q"
        # A batch without ordering keys in one statement. Messages go in in array order, which
        # the caller sorted by (stream, key); jobs are listed for each key's first put only and
        # join the messages this statement inserted (a duplicate gets none), in list order so
        # that ids follow put order. ``woken`` is read once, so its notices are sent once.
        self.put_many = f"""
WITH ins AS (
    INSERT INTO {s}.messages (stream, key, body, meta, created_at)
    SELECT u.stream, u.key, u.body, u.meta::jsonb, u.created_at
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::float8[])
        AS u(stream, key, body, meta, created_at)
    ON CONFLICT (stream, key) DO NOTHING
    RETURNING id, stream, key
), job AS (
    INSERT INTO {s}.jobs (message_id, queue, task, status, run_at, created_at, updated_at)
    SELECT ins.id, u.queue, u.task, 'pending', u.run_at, u.now, u.now
    FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::float8[], $11::float8[])
        WITH ORDINALITY AS u(stream, key, queue, task, run_at, now, n)
    JOIN ins ON ins.stream = u.stream AND ins.key = u.key
    ORDER BY u.n
    ON CONFLICT (message_id, queue, task) DO NOTHING
    RETURNING queue
), woken AS (
    SELECT pg_notify($12, q.queue) FROM (SELECT DISTINCT queue FROM job) AS q
)
SELECT ins.id, ins.stream, ins.key, (SELECT count(*) FROM woken) AS notices FROM ins
"""
        # The CTE repeats the partial indexes' WHERE terms so the planner can use them;
        # ``run_at <= now`` also holds for a running job (it was due when claimed) and bounds
        # the index range, so a large backlog of future retries is never scanned.
        self.claim = f"""
WITH picked AS (
    SELECT j.id FROM {s}.jobs AS j
    WHERE j.queue = $1 AND j.status IN {ACTIVE} AND j.run_at <= $2
        AND (j.status = 'pending' OR j.lease_until <= $2)
        AND (j.ordering_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM {s}.jobs AS e
            WHERE e.queue = j.queue AND e.task = j.task AND e.ordering_key = j.ordering_key
                AND e.id < j.id AND e.status IN {ACTIVE}))
    ORDER BY j.run_at, j.id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.jobs AS j SET status = 'running', owner = $4, lease_until = $5,
    attempts = j.attempts + 1, updated_at = $2
FROM picked, {s}.messages AS m
WHERE j.id = picked.id AND m.id = j.message_id
RETURNING {job_columns}, {message_columns}
"""
        self.extend = f"""
UPDATE {s}.jobs SET lease_until = $1, updated_at = $2
WHERE id = $3 AND owner = $4 AND status = 'running' AND ($5::int IS NULL OR attempts = $5)
"""
        # Duplicates removed by the caller (an UPDATE changes a row once whatever the matches).
        self.succeed_many = f"""
WITH done AS (
    UPDATE {s}.jobs AS j SET status = 'succeeded', lease_until = NULL, updated_at = u.now
    FROM unnest($1::bigint[], $2::text[], $3::int[], $4::float8[]) AS u(id, owner, attempt, now)
    WHERE j.id = u.id AND j.owner = u.owner AND j.status = 'running'
        AND (u.attempt IS NULL OR j.attempts = u.attempt)
    RETURNING j.id, j.queue, j.ordering_key
)
SELECT id, queue, ordering_key,
    CASE WHEN ordering_key IS NOT NULL THEN pg_notify($5, queue) END AS notified
FROM done
"""
        self.fail = f"""
WITH failed AS (
    UPDATE {s}.jobs SET status = $1, run_at = coalesce($2, run_at), last_error = $3,
        lease_until = NULL, updated_at = $4
    WHERE id = $5 AND owner = $6 AND status = 'running' AND ($7::int IS NULL OR attempts = $7)
    RETURNING queue, ordering_key
)
SELECT queue, ordering_key,
    CASE WHEN ($2::float8 IS NOT NULL AND $2::float8 <= $4)
        OR ($2::float8 IS NULL AND ordering_key IS NOT NULL)
    THEN pg_notify($8, queue) END AS notified
FROM failed
"""
        self.replay = f"""
WITH replayed AS (
    UPDATE {s}.jobs AS j SET status = 'pending', run_at = $1, attempts = 0, lease_until = NULL,
        updated_at = $2
    FROM {s}.messages AS m
    WHERE m.id = j.message_id AND j.status <> 'running' AND {{where}}
    RETURNING j.queue
)
SELECT queue, count(*) AS n, pg_notify($3, queue) AS notified FROM replayed GROUP BY queue
"""
        self.drop = f"""
DELETE FROM {s}.jobs AS j USING {s}.messages AS m
WHERE m.id = j.message_id AND j.status <> 'running' AND {{where}}
"""
        # A job replayed meanwhile keeps its message: the jobs delete skips it (it re-reads a
        # changed row), so the messages delete breaks the foreign key, nothing is deleted and
        # ``purge`` looks at the window again.
        self.purge = f"""
WITH batch AS (
    SELECT id, created_at FROM {s}.messages WHERE id >= $1 ORDER BY id LIMIT $2
), doomed AS (
    SELECT b.id FROM batch AS b WHERE b.created_at < $3 AND NOT EXISTS (
        SELECT 1 FROM {s}.jobs AS j WHERE j.message_id = b.id AND j.status IN {ACTIVE})
), gone_jobs AS (
    DELETE FROM {s}.jobs WHERE message_id IN (SELECT id FROM doomed)
        AND status NOT IN {ACTIVE}
), gone AS (
    DELETE FROM {s}.messages WHERE id IN (SELECT id FROM doomed) RETURNING id
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM batch) AS seen,
    (SELECT max(id) FROM batch) AS last,
    (SELECT coalesce(bool_or(created_at >= $3), false) FROM batch) AS newer
"""
        self.jobs = f"""
SELECT {job_columns} FROM {s}.jobs AS j JOIN {s}.messages AS m ON m.id = j.message_id
WHERE {{where}} ORDER BY j.id DESC LIMIT $1
"""
        self.message = f"SELECT {message_columns} FROM {s}.messages AS m WHERE m.id = $1"
        self.counts = f"""
SELECT status, count(*) AS n FROM {s}.jobs WHERE $1::text IS NULL OR queue = $1 GROUP BY status
"""


def _where(selection: Selection, *, first: int) -> tuple[str, list[Any]]:
    """A selection as SQL terms on ``jobs AS j`` and ``messages AS m``, numbered from ``first``."""
    terms: list[str] = []
    args: list[Any] = []

    def term(sql: str, arg: Any) -> None:
        args.append(arg)
        terms.append(sql.format(f"${first + len(args) - 1}"))

    if selection.queue is not None:
        term("j.queue = {}", selection.queue)
    if selection.job_ids:
        term("j.id = ANY({}::bigint[])", [int(i) for i in selection.job_ids])
    if selection.message_ids:
        term("j.message_id = ANY({}::bigint[])", [int(i) for i in selection.message_ids])
    if selection.stream is not None:
        term("m.stream = {}", selection.stream)
    if selection.key is not None:
        term("m.key = {}", selection.key)
    if selection.task is not None:
        term("j.task = {}", selection.task)
    if selection.statuses:
        term("j.status = ANY({}::text[])", [Status(s).value for s in selection.statuses])
    if selection.since is not None:
        term("j.created_at >= {}::float8", float(selection.since))
    if selection.until is not None:
        term("j.created_at < {}::float8", float(selection.until))
    return " AND ".join(terms) or "true", args


def _affected(status: str) -> int:
    """The row count at the end of a command tag such as ``UPDATE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _job(row: asyncpg.Record) -> Job:
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


def _message(row: asyncpg.Record, *, offset: int) -> StoredMessage:
    return StoredMessage(
        id=row[offset],
        stream=row[offset + 1],
        key=row[offset + 2],
        body=bytes(row[offset + 3]),
        meta=orjson.loads(row[offset + 4]),
        created_at=row[offset + 5],
    )
