"""The fair pool: LIFO idle connections, FIFO waiters, deadlines, slots."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from patchbay.errors import PoolExhausted
from patchbay.sql.pool import Pool


class Conn:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False


def make_pool(size: int = 2, timeout: float = 0.2) -> tuple[Pool[Conn], list[Conn]]:
    made: list[Conn] = []
    counter = itertools.count()

    async def connect() -> Conn:
        conn = Conn(next(counter))
        made.append(conn)
        return conn

    async def close(conn: Conn) -> None:
        conn.closed = True

    pool = Pool(connect, close, size=size, acquire_timeout=timeout, alive=lambda c: not c.closed)
    return pool, made


async def test_opens_lazily_up_to_size_and_reuses() -> None:
    """Connections are opened on demand, never more than size, and reused LIFO."""
    pool, made = make_pool()
    a = await pool.acquire()
    b = await pool.acquire()
    pool.release(a)
    pool.release(b)
    assert await pool.acquire() is b
    assert len(made) == 2 and pool.open == 2


async def test_waiters_are_served_in_arrival_order() -> None:
    """Released connections go to the longest waiter first."""
    pool, _ = make_pool(size=1, timeout=2)
    held = await pool.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        conn = await pool.acquire()
        order.append(i)
        pool.release(conn)

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    pool.release(held)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_acquire_deadline_raises_pool_exhausted() -> None:
    """A waiter gives up with PoolExhausted after acquire_timeout."""
    pool, _ = make_pool(size=1, timeout=0.05)
    await pool.acquire()
    with pytest.raises(PoolExhausted):
        await pool.acquire()
    assert pool.waiting == 0


async def test_discard_hands_the_slot_to_a_waiter() -> None:
    """A discarded connection's slot lets a waiter open a new one, never exceeding size."""
    pool, made = make_pool(size=1, timeout=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    pool.discard(held)
    fresh = await waiter
    await asyncio.sleep(0)
    assert fresh is not held and held.closed and pool.open == 1 and len(made) == 2


async def test_dead_idle_connections_are_skipped() -> None:
    """An idle connection whose socket died is closed, not lent."""
    pool, _ = make_pool()
    a = await pool.acquire()
    pool.release(a)
    a.closed = True
    assert await pool.acquire() is not a


async def test_clear_closes_idle_connections() -> None:
    """clear() closes every idle connection and frees their slots."""
    pool, made = make_pool()
    a = await pool.acquire()
    pool.release(a)
    await pool.clear()
    assert made[0].closed and pool.open == 0


async def test_connect_failure_frees_the_slot() -> None:
    """A failed connect does not leak a slot."""

    async def connect() -> Conn:
        raise OSError("refused")

    async def close(conn: Conn) -> None:
        pass

    pool: Pool[Conn] = Pool(connect, close, size=1, acquire_timeout=0.1)
    for _ in range(3):
        with pytest.raises(OSError, match="refused"):
            await pool.acquire()
    assert pool.open == 0


async def test_forget_frees_the_slot_without_closing() -> None:
    """forget() frees the slot of a connection its caller closes itself."""
    pool, _ = make_pool(size=1)
    held = await pool.acquire()
    pool.forget(held)
    assert pool.open == 0 and not held.closed
    assert await pool.acquire() is not held


async def test_fail_waiters_wakes_them_with_the_error() -> None:
    """Waiters for a server that went down get its error at once, not after the deadline."""
    pool, _ = make_pool(size=1, timeout=5)
    await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    pool.fail_waiters(lambda: ConnectionError("down"))
    with pytest.raises(ConnectionError, match="down"):
        await waiter
    assert pool.waiting == 0


async def test_cancelled_waiter_never_leaks_a_connection() -> None:
    """A waiter cancelled just as a connection is handed to it gives the connection back."""
    pool, _ = make_pool(size=1, timeout=5)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    pool.release(held)  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await pool.acquire() is held
    assert pool.open == 1 and pool.waiting == 0
