"""A small fair connection pool: a LIFO stack of idle connections and a FIFO queue of waiters.

Measured on this kind of machine, a pool this simple matches asyncmy's own pool on throughput
and cuts p99 from about 21 ms to 5 ms, because waiters are served strictly in arrival order
(``python-stack-ceiling.md``). It also has to do what driver pools do not agree on: a deadline
for acquiring, a deadline for connecting, and dropping every idle connection at once when the
server is found dead. Connections are opened lazily up to ``size``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from patchbay.errors import PoolExhausted

C = TypeVar("C")


class Pool(Generic[C]):
    """Up to ``size`` connections made by ``connect`` and ended by ``close``."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[C]],
        close: Callable[[C], Coroutine[Any, Any, None]],
        *,
        size: int,
        acquire_timeout: float,
        alive: Callable[[C], bool] = lambda _: True,
    ) -> None:
        self._connect = connect
        self._close = close
        self._alive = alive
        self.size = size
        self.acquire_timeout = acquire_timeout
        self._idle: list[C] = []
        self._waiters: collections.deque[asyncio.Future[C | None]] = collections.deque()
        self.open = 0  # connections that exist or are being opened
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_use(self) -> int:
        """Connections lent out right now."""
        return self.open - len(self._idle)

    @property
    def busy(self) -> bool:
        """Whether ``acquire`` would wait: no idle connection and no room to open one."""
        return not self._idle and self.open >= self.size

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection."""
        return len(self._waiters)

    async def acquire(self) -> C:
        """Lend a connection, opening one if the pool is not full, else wait for one.

        Raises ``PoolExhausted`` after ``acquire_timeout``; a connect error propagates.
        """
        while self._idle:
            conn = self._idle.pop()
            if self._alive(conn):
                return conn
            await self._discard(conn)
        if self.open < self.size:
            return await self._open()
        loop = self._loop
        if loop is None:
            # Cached: on Python 3.11 every get_running_loop() makes a getpid() system call.
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[C | None] = loop.create_future()
        self._waiters.append(waiter)
        # A timer handle, not asyncio.wait_for: at high concurrency most requests wait here, and
        # wait_for costs twice as much.
        timer = loop.call_at(loop.time() + self.acquire_timeout, self._expire, waiter)
        try:
            handed: C | None = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over just as the caller gave up
            self._forget_waiter(waiter)
            raise
        except PoolExhausted:
            self._forget_waiter(waiter)
            raise
        finally:
            timer.cancel()
        if handed is None:  # a slot was handed over: open a new connection in it
            return await self._open(counted=True)
        return handed

    def _expire(self, waiter: asyncio.Future[C | None]) -> None:
        if not waiter.done():
            waiter.set_exception(
                PoolExhausted(
                    f"no connection came free within {self.acquire_timeout:g} s", size=self.size
                )
            )

    def _forget_waiter(self, waiter: asyncio.Future[C | None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _give_back(self, handed: C | None) -> None:
        if handed is None:
            self._free_slot()
        else:
            self.release(handed)

    def release(self, conn: C) -> None:
        """Return a healthy connection to the pool."""
        if self._closed:
            self._spawn_close(conn)
            self.open -= 1
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def discard(self, conn: C) -> None:
        """Free the slot of a connection that must not be reused; close it in the background.

        Not awaited: a dead server may never answer a polite close.
        """
        self._free_slot()
        self._spawn_close(conn)

    def forget(self, conn: C) -> None:
        """Free the slot of a connection the caller closes itself (after a timeout)."""
        del conn
        self._free_slot()

    def fail_waiters(self, error: Callable[[], BaseException]) -> None:
        """Wake every waiter with an error (its server went down: try another)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error())

    async def clear(self) -> None:
        """Close every idle connection (the server was found dead or restarted)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)

    async def close(self) -> None:
        """Close the pool: idle connections now, lent ones when they come back."""
        self._closed = True
        await self.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.cancel()

    async def _open(self, *, counted: bool = False) -> C:
        if not counted:
            self.open += 1
        try:
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    async def _discard(self, conn: C) -> None:
        self._free_slot()
        with contextlib.suppress(Exception):  # a connection being thrown away may fail to close
            await self._close(conn)

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over: the waiter opens a connection
                return
        self.open -= 1

    def _spawn_close(self, conn: C) -> None:
        async def close() -> None:
            with contextlib.suppress(BaseException):
                await self._close(conn)

        task = asyncio.get_running_loop().create_task(close())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[None]] = set()
