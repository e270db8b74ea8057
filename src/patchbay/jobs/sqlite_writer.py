"""The SQLite job store's writer: a process of its own that makes every write and commit.

``SqliteStore`` (``patchbay.jobs.sqlite``) starts one per open store (a Python that runs
``main``) and talks to it over a socket pair: it sends each operation the moment it is made,
and the writer answers each group it committed with one frame of outcomes.

- **Why a process, not a thread.** Every ``sqlite3`` call gives up the GIL while SQLite works
  and must take it back afterwards. Under load the event loop holds the GIL almost all the
  time, and a thread that wants it back waits for the loop's next forced switch (up to 5 ms):
  measured on this VM, a store thread spent 5.6 ms per group commit of 23 puts that takes
  0.9 ms alone, and intake stalled on it. A process has a GIL of its own, so its commits overlap
  the loop's work instead of queueing behind it, and the loop's cost per write is one ``write``
  of a pickled operation and its share of one answer frame. The socket is private to the two
  processes (``socketpair``), so pickle is safe here, and it is the fastest codec in the
  standard library for these values (bodies are bytes, ids ints, rows tuples).
- **Group commit.** The fsync dominates a put (measured here: 3.8k rows/s at one commit per row,
  25k at 16 rows per commit, 56k at 128). The writer blocks until something arrives, then takes
  everything already waiting in the socket as one group: puts, successes, claims and every other
  write in one transaction with one commit; each caller's future resolves only when the answer
  to that group comes back, after the commit returned. A lone write still pays a commit of its
  own; a burst shares one. If the shared transaction fails for a reason that is not the file's
  (one bad message, say), each write is retried alone, so a bad one fails alone.
- **Puts alone: one statement.** A group of nothing but puts is one ``INSERT`` into a temp
  view whose trigger writes the messages and jobs (or, when none of them has jobs, as in intake
  without handlers, straight into ``messages``), in autocommit: SQLite opens the write
  transaction, inserts, commits and fsyncs inside one ``sqlite3_step`` (``_commit_chunk``). Ids
  come from a counter the writer keeps; a duplicate key, or an id another process took, aborts
  the statement (nothing written) and the group goes the locked way, which tells duplicates
  apart.
- **Checkpoints off the commit path.** SQLite's automatic checkpoint ran inside a commit about
  every tenth group; a ``_Checkpointer`` thread with its own connection runs passive checkpoints
  after every few MB committed instead (the automatic one stays as a backstop at a far larger
  size).
- **Across processes.** WAL lets the other workers read while one writes. Every write starts with
  ``BEGIN IMMEDIATE``, which takes the file's write lock (waiting up to ``busy_timeout``) before
  reading anything, so a claim's choice and its update see no other process's commit in between
  and no transaction ever fails with ``SQLITE_BUSY_SNAPSHOT`` half-way. Two processes storing the
  same ``(stream, key)`` therefore also serialise: the second finds the first's row
  (``ON CONFLICT DO NOTHING``, then a select) and reports a duplicate.
- **Errors.** A ``sqlite3`` error saying the file cannot be used now (I/O error, disk full, locked
  past ``busy_timeout``, cannot open, corrupt, read-only) becomes ``StoreUnavailable``. The
  connection is then dropped and the next operation opens it again, so the store recovers when
  the disk does.
- **Lifetime.** The writer ignores SIGINT and SIGTERM: a Ctrl-C or a service manager's stop
  reaches the whole process group, and the server must still hand it the puts it accepted
  before it drains. It ends when asked (``StopOp``, after everything sent before) or when its
  socket reaches end of file because the server is gone (a commit in progress completes first:
  such a delivery was never acknowledged, and a provider's retry finds it stored).
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import signal
import socket
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson

from patchbay.jobs.model import NewJob, Put
from patchbay.jobs.store import Row, StoreUnavailable

T = TypeVar("T")

# -- operations and the wire -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutOp:
    """Store ``row`` unless its ``(stream, key)`` is stored (then report the existing id)."""

    seq: int
    row: Row


@dataclass(frozen=True, slots=True)
class SucceedOp:
    """Mark a job succeeded if ``owner`` still holds its lease (and ``attempt`` matches)."""

    seq: int
    job_id: int
    owner: str
    attempt: int | None
    now: float


@dataclass(frozen=True, slots=True)
class CallOp:
    """Run ``CALLS[name](conn, *args)``: in the group's transaction if ``write``, else after."""

    seq: int
    name: str
    args: tuple[Any, ...]
    write: bool


@dataclass(frozen=True, slots=True)
class StopOp:
    """Finish everything sent before, close the file and end the process."""

    seq: int


Op = PutOp | SucceedOp | CallOp | StopOp
Write = PutOp | SucceedOp | CallOp
# What the writer answers per operation: its sequence number, its result or its exception. A
# put's result is its message id and whether it was created (plain values, as for operations).
Outcome = tuple[int, Any, BaseException | None]

_LENGTH: Final = struct.Struct("!I")
RECEIVE: Final = 1 << 20  # bytes per recv; a group is whatever arrived, read until none is left


def encode(value: object) -> bytes:
    """One frame: the pickle's length, then the pickle."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


# Operations cross as plain tuples: pickle runs Python code for every dataclass (10 µs to pack a
# put on the event loop, measured here), and a tuple of builtins packs in under 2 µs.
_PUT, _SUCCEED, _CALL, _STOP = range(4)


def pack(op: Op) -> bytes:
    """``op`` as a frame for the writer (``unpack`` reads it back there)."""
    if isinstance(op, PutOp):
        row = op.row
        jobs = tuple((j.queue, j.task, j.ordering_key, j.delay) for j in row.jobs)
        return encode((_PUT, op.seq, row.stream, row.key, row.body, row.meta, row.now, jobs))
    if isinstance(op, SucceedOp):
        return encode((_SUCCEED, op.seq, op.job_id, op.owner, op.attempt, op.now))
    if isinstance(op, CallOp):
        return encode((_CALL, op.seq, op.name, op.args, op.write))
    return encode((_STOP, op.seq))


def unpack(value: tuple[Any, ...]) -> Op:
    """The operation a frame made by ``pack`` carries."""
    kind, seq, *fields = value
    if kind == _PUT:
        stream, key, body, meta, now, jobs = fields
        return PutOp(seq, Row(stream, key, body, meta, now, tuple(NewJob(*j) for j in jobs)))
    if kind == _SUCCEED:
        return SucceedOp(seq, *fields)
    if kind == _CALL:
        return CallOp(seq, *fields)
    return StopOp(seq)


class Frames:
    """Whole frames out of a byte stream that arrives in arbitrary pieces."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Add ``data``; return every value whose frame is now complete."""
        buffer = self._buffer
        buffer += data
        values: list[Any] = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + size
            if len(buffer) < end:
                break
            values.append(pickle.loads(memoryview(buffer)[start + _LENGTH.size : end]))
            start = end
        del buffer[:start]
        return values


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ``RuntimeError`` that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


# -- the process -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """The process's entry (arguments ``FD PATH BUSY_TIMEOUT``): serve until stopped.

    Started as ``python -c "from patchbay.jobs.sqlite_writer import main; main()"``, not with
    ``-m``: under ``-m`` this module would be ``__main__``, and the operations the server
    pickles as ``patchbay.jobs.sqlite_writer.PutOp`` would be another module's classes here.
    """
    fd, path, busy_timeout = argv if argv is not None else sys.argv[1:]
    # The server stops us (StopOp, or end of file when it is gone), never a signal it also got.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(fd))
    writer = Writer(path, busy_timeout=float(busy_timeout))
    try:
        serve(sock, writer)
    finally:
        writer.close()
        sock.close()


def serve(sock: socket.socket, writer: Writer) -> None:
    """Take each group that arrives on ``sock``, commit it, answer it; until stopped or EOF."""
    frames = Frames()
    with contextlib.suppress(OSError):  # the server's end is gone: nobody is left to answer
        while True:
            data, ended = _arrived(sock)
            ops = [unpack(value) for value in frames.feed(data)]
            if ops:
                outcomes, woken, stop = writer.round(ops)
                sock.sendall(encode((outcomes, sorted(woken))))
                if stop:
                    return
            if ended:
                return


def _arrived(sock: socket.socket) -> tuple[bytes, bool]:
    """One group's bytes, and whether the server's end is closed.

    Waits for the first bytes, then takes everything already waiting without waiting more.
    """
    chunks = [sock.recv(RECEIVE)]
    if not chunks[0]:
        return b"", True
    while True:
        try:
            more = sock.recv(RECEIVE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b"".join(chunks), False
        if not more:
            return b"".join(chunks), True
        chunks.append(more)


# -- the writer --------------------------------------------------------------------------------


class Writer:
    """The store's one connection (WAL, ``synchronous=FULL``) and its group commits."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        # The id the next fast-path message gets (see ``_commit_chunk``). None: read max(id).
        self._next_id: int | None = None
        self._checkpointer = _Checkpointer(path)
        self._unchecked = 0  # bytes committed since the last checkpoint request

    def close(self) -> None:
        """Stop the checkpointer and close the connection."""
        self._checkpointer.stop()
        self._disconnect()

    def round(self, ops: list[Op]) -> tuple[list[Outcome], set[str], bool]:
        """Run one group; return the outcomes, the queues to wake, and whether to stop."""
        stop: StopOp | None = None
        puts: list[PutOp] = []
        writes: list[Write] = []
        reads: list[CallOp] = []
        for op in ops:
            if isinstance(op, StopOp):
                stop = op
            elif isinstance(op, PutOp):
                puts.append(op)
            elif isinstance(op, CallOp) and not op.write:
                reads.append(op)
            else:
                writes.append(op)
        outcomes: list[Outcome] = []
        woken: set[str] = set()
        if writes:
            # Puts with other writes: one transaction for them all (puts first, as sent).
            self._next_id = None  # this path picks message ids of its own
            group: list[Write] = [*puts, *writes]
            for start in range(0, len(group), MAX_BATCH):
                done, wakes = self._commit(group[start : start + MAX_BATCH])
                outcomes += done
                woken |= wakes
        elif puts:
            for start in range(0, len(puts), CHUNK):
                done, wakes = self._commit_chunk(puts[start : start + CHUNK])
                outcomes += done
                woken |= wakes
        outcomes += [self._read(op) for op in reads]
        if stop is not None:
            outcomes.append((stop.seq, None, None))
        return outcomes, woken, stop is not None

    def _committed(self, size: int) -> None:
        """Count ``size`` bytes committed; ask for a checkpoint after every few MB."""
        self._unchecked += size
        if self._unchecked >= CHECKPOINT_BYTES:
            self._unchecked = 0
            self._checkpointer.request()

    def _commit_chunk(self, puts: list[PutOp]) -> tuple[list[Outcome], set[str]]:
        """At most ``CHUNK`` puts in one ``INSERT INTO put_rows`` (see ``PUT_TRIGGER``).

        Message ids come from ``_next_id``, not from a read inside the transaction, which would
        be one more statement. Durability is unchanged: the statement is its own transaction,
        committed (WAL, ``synchronous=FULL``: fsynced) before ``sqlite3_step`` returns, and
        nothing is answered before that. If a message's key is stored already (a duplicate) or
        its id was taken (by another process since), the trigger aborts the statement, nothing
        is written, and the group takes the locked way.
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
            if any(op.row.jobs for op in puts):
                ((count, params),) = _chunks(rows, 7)
                conn.execute(_put_rows(count), params)
            else:
                # No jobs to write (intake without handlers): a plain insert, which a taken key
                # or id aborts whole just as the trigger does, without the trigger's steps and
                # the sort (CPU per put in the writer: 63 -> 51 µs at 8 puts per statement).
                ((count, params),) = _chunks([r[:6] for r in rows], 6)
                conn.execute(_put_messages(count), params)
        except Exception as exc:
            self._next_id = None
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if unavailable(exc):
                error = self._translate(exc)
                return [(op.seq, None, error) for op in puts], set()
            # A duplicate, an id taken, or one bad put: nothing was written. The locked way
            # tells duplicates apart, and runs each put alone if the group fails.
            return self._commit(list(puts))
        self._next_id = next_id + len(first)
        self._committed(sum(len(row[3]) + len(row[4]) for row in rows))
        return _put_outcomes(puts, first, wanted)

    def _read(self, op: CallOp) -> Outcome:
        try:
            return op.seq, _run(self._connection(), op), None
        except Exception as exc:
            return op.seq, None, portable(self._translate(exc))

    def _commit(self, batch: list[Write]) -> tuple[list[Outcome], set[str]]:
        """Run a group of writes in one transaction and one commit; what to answer afterwards."""
        # Rows of puts (their bodies) are most of what a commit writes; other writes, a page.
        self._committed(sum(len(op.row.body) if isinstance(op, PutOp) else 4096 for op in batch))
        try:
            outcomes, woken = _transaction(self._connection(), lambda c: _write_group(c, batch))
        except Exception as exc:
            if len(batch) > 1 and not unavailable(exc):
                # Not the disk but one write's fault: run each alone, so only that one fails.
                outcomes, woken = [], set()
                for op in batch:
                    done, wakes = self._commit([op])
                    outcomes += done
                    woken |= wakes
                return outcomes, woken
            error = portable(self._translate(exc))
            return [(op.seq, None, error) for op in batch], set()
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
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            cached_statements=64,
            check_same_thread=False,  # one user at a time, but not always the opening thread
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
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


# -- the calls a CallOp names ------------------------------------------------------------------


def _execute(conn: sqlite3.Connection, sql: str, args: Any, result: str) -> Any:
    """One statement; ``result`` says what comes back: "rows", "one" or "rowcount"."""
    cursor = conn.execute(sql, args)
    if result == "rows":
        return cursor.fetchall()
    if result == "one":
        return cursor.fetchone()
    return cursor.rowcount


def _pick(conn: sqlite3.Connection, args: dict[str, Any]) -> str | None:
    """A claim's choice and lease (see ``SqliteStore.claim``): the ids taken, as a JSON array."""
    (ids,) = conn.execute(PICK, args).fetchone()
    if ids == "[]":
        return None
    conn.execute(LEASE, {**args, "ids": ids})
    return str(ids)


def _purge(
    conn: sqlite3.Connection, start: int, batch: int, before: float
) -> tuple[int, int | None]:
    """One window of ``SqliteStore.purge``: the ``batch`` messages from id ``start`` on.

    Returns how many messages went and where the next window starts, None when the window
    reached messages stored after ``before`` (ids grow with time) or the end.
    """
    rows = conn.execute(PURGE_WINDOW, (start, batch)).fetchall()
    if not rows:
        return 0, None
    args = (start, rows[-1][0], before)
    conn.execute(f"DELETE FROM jobs WHERE message_id IN ({PURGEABLE})", args)
    deleted = conn.execute(f"DELETE FROM messages WHERE id IN ({PURGEABLE})", args).rowcount
    done = len(rows) < batch or any(created_at >= before for _, created_at in rows)
    return deleted, None if done else rows[-1][0] + 1


def _set_value(conn: sqlite3.Connection, now: float, args: tuple[Any, ...]) -> None:
    # Expired values are dropped here, so keys that are never set again do not pile up.
    conn.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))
    conn.execute(SET_VALUE, args)


def _take(conn: sqlite3.Connection, bucket: str, horizon: float, limit: int, now: float) -> float:
    """Spend a call of a budget if one is left; else the seconds until one is (``Store.take``)."""
    conn.execute("DELETE FROM calls WHERE bucket = ? AND at <= ?", (bucket, horizon))
    row = conn.execute(BLOCKING_CALL, (bucket, horizon, limit - 1)).fetchone()
    if row is not None:
        return float(row[0]) - horizon
    conn.execute("INSERT INTO calls (bucket, at) VALUES (?, ?)", (bucket, now))
    return 0.0


def _nothing(conn: sqlite3.Connection) -> None:
    """Opens the file (and creates the schema) when it was not yet: ``SqliteStore.open``."""


CALLS: Final[Mapping[str, Callable[..., Any]]] = {
    "execute": _execute,
    "pick": _pick,
    "set_value": _set_value,
    "take": _take,
    "purge": _purge,
    "nothing": _nothing,
}


def _run(conn: sqlite3.Connection, op: CallOp) -> Any:
    return CALLS[op.name](conn, *op.args)


# -- SQL and the rest of the writer's pieces ---------------------------------------------------

MAX_BATCH: Final = 1024  # writes per transaction; bounds one commit's latency, not its benefit
# Rows per multi-row statement: at most 7 parameters a row stays under SQLite's smallest
# compiled-in parameter limit (999); row counts are rounded up to a power of two (the rest
# padded with NULL rows that the statement skips), so only 8 texts per statement are prepared.
CHUNK: Final = 128
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

PURGE_WINDOW: Final = "SELECT id, created_at FROM messages WHERE id >= ? ORDER BY id LIMIT ?"
# The messages of a window (ids from ? to ?) stored before ? that no job still waits on.
PURGEABLE: Final = f"""
SELECT m.id FROM messages AS m WHERE m.id BETWEEN ? AND ? AND m.created_at < ?
    AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.message_id = m.id AND j.status IN {ACTIVE})
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
# count.
FIND_MESSAGES: Final = """
SELECT json_group_array(json_array(m.id, m.stream, m.key))
FROM json_each(?) AS u JOIN messages AS m
    ON m.stream = json_extract(u.value, '$[0]') AND m.key = json_extract(u.value, '$[1]')
"""
# The put fast path (``_commit_chunk``): a group of puts is one INSERT into this view, in
# autocommit mode, so that SQLite opens the write transaction, inserts every message and job,
# commits and fsyncs inside one ``sqlite3_step``: one statement per group instead of a
# transaction of several. Temp objects: per connection, nothing in the file changes.
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


class _Checkpointer:
    """Passive WAL checkpoints on a thread and connection of their own, when asked.

    Off the commit path: with SQLite's automatic checkpoint, every tenth commit or so copied
    the WAL into the database and fsynced it inside the commit, and the next group waited for
    it. A passive checkpoint takes no lock a writer needs (it copies
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


def _write_group(conn: sqlite3.Connection, batch: list[Write]) -> tuple[list[Outcome], set[str]]:
    """Every write of a group, inside its transaction; the outcomes to deliver after COMMIT."""
    puts = [op for op in batch if isinstance(op, PutOp)]
    succeeds = [op for op in batch if isinstance(op, SucceedOp)]
    outcomes: list[Outcome] = []
    woken: set[str] = set()
    if puts:
        results = _insert_puts(conn, [op.row for op in puts])
        for queued, put in zip(puts, results, strict=True):
            outcomes.append((queued.seq, (put.message_id, put.created), None))
            if put.created:
                woken.update(job.queue for job in queued.row.jobs)
    if succeeds:
        done, finished = _finish(conn, succeeds)
        outcomes.extend((s.seq, ok, None) for s, ok in zip(succeeds, done, strict=True))
        woken |= finished
    for op in batch:
        if isinstance(op, CallOp):
            outcomes.append((op.seq, _run(conn, op), None))
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
    puts: list[PutOp], first: dict[tuple[str, str], int], ids: dict[tuple[str, str], int]
) -> tuple[list[Outcome], set[str]]:
    """What each put of a fast-path statement did (its first copy created); queues to wake."""
    outcomes: list[Outcome] = []
    woken: set[str] = set()
    for i, op in enumerate(puts):
        pair = (op.row.stream, op.row.key)
        new = first[pair] == i  # a second copy in the same group is a duplicate
        outcomes.append((op.seq, (ids[pair], new), None))
        if new:
            woken.update(job.queue for job in op.row.jobs)
    return outcomes, woken


@functools.lru_cache(maxsize=256)
def _jobs_json(jobs: tuple[NewJob, ...]) -> str:
    """A message's jobs as the JSON array ``PUT_TRIGGER`` reads: [queue, task, delay, key]."""
    return orjson.dumps([[j.queue, j.task, j.delay, j.ordering_key] for j in jobs]).decode()


@functools.cache
def _put_messages(rows: int) -> str:
    # No ORDER BY: ids are explicit, and without jobs nothing depends on the insertion order.
    return (
        "INSERT INTO messages (id, stream, key, body, meta, created_at)"
        f" SELECT * FROM (VALUES {_values(6, rows)}) WHERE column1 IS NOT NULL"
    )


@functools.cache
def _put_rows(rows: int) -> str:
    # Ordered by id, which follows put order: the trigger then inserts jobs in put order.
    return (
        f"INSERT INTO put_rows SELECT * FROM (VALUES {_values(7, rows)})"
        " WHERE column1 IS NOT NULL ORDER BY column1"
    )


def _finish(conn: sqlite3.Connection, ops: list[SucceedOp]) -> tuple[list[bool], set[str]]:
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
