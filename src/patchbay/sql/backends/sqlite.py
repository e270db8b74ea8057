"""SQLite, the embedded default, through the standard library's ``sqlite3`` on worker threads.

A read first runs on the event loop's thread under a progress handler that stops it after half a
millisecond; a read that needs longer, and every write, runs on a thread of the connector's
executor, so the event loop is never held longer than that. The database is opened in WAL mode: readers run concurrently, while a request
that may write holds the connector's write lock, so writers queue in order instead of failing
with ``SQLITE_BUSY``. A batch is split with the SQL lexer (``statements.split``). A query past its
timeout is stopped with ``sqlite3_interrupt`` and its connection dropped.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from patchbay.sql import statements, types, values
from patchbay.sql.backends import errnos
from patchbay.sql.backends.base import ServerFailure
from patchbay.sql.results import Outcome, Rows, SqlError, Write
from patchbay.sql.statements import Shape

T = TypeVar("T")
BUSY_TIMEOUT_MS: Final = 5000
INLINE_BUDGET: Final = 0.0005  # seconds a read may hold the event loop before moving to a thread
PROGRESS_STEPS: Final = 2000  # SQLite VM steps between budget checks


def sqlite_path(url: str) -> str:
    """The file of a SQLite URL, as SQLAlchemy reads them.

    ``sqlite:///relative/x.db`` is relative to the working directory, ``sqlite:////abs/x.db``
    absolute; a three-slash path that names no file but does name one from ``/`` is taken as
    absolute too, since that is what people usually mean by ``sqlite:///tmp/x.db``.
    """
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    if path.startswith("/") and not path.startswith("//"):
        relative = path[1:]
        if relative == ":memory:" or Path(relative).exists() or not Path(path).exists():
            return relative
    elif path.startswith("//"):
        return path[1:]
    return path


class SQLiteConnector:
    """Opens connections to one SQLite database file."""

    kind = "sqlite"

    def __init__(self, url: str, *, strict: bool, threads: int) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.strict = strict
        self.write_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqlite")

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def connect(self) -> SQLiteConnection:
        """Open the file (which must exist) in WAL mode."""
        if self.path != ":memory:" and not await self.call(Path(self.path).is_file):
            raise ServerFailure(f"no SQLite database at {self.path}", sent=False)

        def open_() -> sqlite3.Connection:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return conn

        try:
            return SQLiteConnection(await self.call(open_), self)
        except sqlite3.Error as exc:
            raise ServerFailure(f"cannot open {self.path}: {exc}", sent=False) from None

    async def aclose(self) -> None:
        """Stop the worker threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class SQLiteConnection:
    """One ``sqlite3`` connection, used by one request at a time."""

    def __init__(self, conn: sqlite3.Connection, connector: SQLiteConnector) -> None:
        self._conn = conn
        self._connector = connector
        self._strict = connector.strict
        self._open = True

    def alive(self) -> bool:
        """Whether the connection is open."""
        return self._open

    async def run(self, sql: str, *, rollback_on_error: bool, shape: Shape) -> Outcome:
        """Run a read inline if it is quick, else on a worker thread (writes under the lock)."""
        if shape.read:
            outcome = self._run_inline(sql, rollback_on_error)
            if outcome is None:
                outcome = await self._connector.call(lambda: self._run(sql, rollback_on_error))
        else:
            async with self._connector.write_lock:
                outcome = await self._connector.call(lambda: self._run(sql, rollback_on_error))
        if not shape.stateless:
            # PRAGMAs, temporary tables and ATTACH live on the connection: start afresh.
            await self.close()
        return outcome

    def _run_inline(self, sql: str, rollback_on_error: bool) -> Outcome | None:
        """Try a read on the event loop's thread within ``INLINE_BUDGET``; ``None`` if too slow.

        A thread hop costs 5-10x a point lookup here (``docs/benchmarks.md``), so a read first
        runs inline under a progress handler that interrupts it once the budget is spent; the
        loop is never held longer than that, and the interrupted read (reads have no effects)
        runs again on a worker thread.
        """
        deadline = time.perf_counter() + INLINE_BUDGET
        over = False

        def budget() -> int:
            nonlocal over
            over = time.perf_counter() > deadline
            return int(over)

        self._conn.set_progress_handler(budget, PROGRESS_STEPS)
        try:
            outcome = self._run(sql, rollback_on_error)
        finally:
            self._conn.set_progress_handler(None, 0)
        return None if over else outcome

    def _run(self, sql: str, rollback_on_error: bool) -> Outcome:
        results: list[Rows | Write] = []
        error: SqlError | None = None
        cursor = self._conn.cursor()
        try:
            for statement in statements.split(sql, "sqlite"):
                try:
                    cursor.execute(statement)
                    if cursor.description is None:
                        results.append(Write(max(cursor.rowcount, 0), cursor.lastrowid or 0))
                    else:
                        results.append(self._rows(cursor))
                except sqlite3.Error as exc:
                    message = str(exc)
                    error = SqlError(
                        errnos.sqlite(getattr(exc, "sqlite_errorname", None), message), message
                    )
                    break
                except (OverflowError, ValueError) as exc:  # e.g. an integer over 64 bits
                    error = SqlError(errnos.UNKNOWN_ERROR, str(exc))
                    break
        finally:
            cursor.close()
        if not self._open:  # aborted while running: close on the thread that used it
            self._conn.close()
            return Outcome(results, error, None)
        rolled_back = None
        if error is not None and rollback_on_error:
            try:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                rolled_back = True
            except sqlite3.Error:
                rolled_back = False
        return Outcome(results, error, rolled_back)

    def _rows(self, cursor: sqlite3.Cursor) -> Rows:
        header = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        names = []
        fixes: list[tuple[int, values.Fix]] = []
        for i in range(len(header)):
            first = next((row[i] for row in rows if row[i] is not None), None)
            name = types.sqlite_name(first)
            if isinstance(first, bytes):
                if self._strict:
                    name = "MYSQL_TYPE_TEXT"
                fixes.append((i, values.null if self._strict else values.b64))
            names.append(name)
        return Rows(header, names, values.apply(rows, fixes) if fixes else rows)

    async def info(self, key: str) -> Any:
        """Answer DBSlayer's info flags with SQLite's nearest equivalents."""
        version = sqlite3.sqlite_version
        if key == "STAT":
            return f"SQLite {version}  Path: {self._connector.path}"
        if key == "CLIENT_INFO":
            return version
        if key in ("CLIENT_VERSION", "SERVER_VERSION"):
            return types.version_number(version)
        if key == "HOST_INFO":
            return f"{self._connector.path} via SQLite"
        raise KeyError(key)

    async def ping(self) -> None:
        """Check the file can still be read."""
        try:
            await self._connector.call(lambda: self._conn.execute("SELECT 1").fetchone())
        except sqlite3.Error as exc:
            raise ServerFailure(f"ping failed: {exc}", sent=True) from None

    async def close(self) -> None:
        """Close the connection."""
        if self._open:
            self._open = False
            await self._connector.call(self._conn.close)

    async def abort(self) -> None:
        """Interrupt the running statement; its own thread closes the connection (see ``_run``)."""
        self._open = False
        self._conn.interrupt()
