"""Retention: the background purge of ended messages, on the SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from patchbay.jobs.model import Message
from patchbay.jobs.retention import DAY, LOCK, Retention
from patchbay.jobs.sqlite import SqliteStore
from tests.unit.jobs.contract import FakeClock


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SqliteStore]:
    """An open SQLite job store on the test's clock."""
    opened = SqliteStore(tmp_path / "jobs.db", clock=clock)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> FakeClock:
    """The store's and the retention's clock."""
    return FakeClock()


async def _ended(store: SqliteStore, key: str) -> int:
    """Store a message without jobs: it has nothing left to do."""
    put = await store.put(Message(stream="s", key=key, body=b"{}", meta={}))
    return put.message_id


async def test_purges_what_is_older_than_the_retention(
    store: SqliteStore, clock: FakeClock
) -> None:
    """A message older than ``days`` goes, a younger one stays."""
    old = await _ended(store, "old")
    clock.advance(20 * DAY)
    young = await _ended(store, "young")
    clock.advance(11 * DAY)
    assert await Retention(store, 30, clock=clock).run_once() == 1
    assert await store.message(old) is None
    assert await store.message(young) is not None


async def test_skips_the_round_while_another_process_purges(
    store: SqliteStore, clock: FakeClock
) -> None:
    """With the purge lock held elsewhere, a round purges nothing and says so."""
    await _ended(store, "old")
    clock.advance(31 * DAY)
    assert await store.acquire(LOCK, "another-worker", 60)
    assert await Retention(store, 30, clock=clock).run_once() is None
    await store.release(LOCK, "another-worker")
    assert await Retention(store, 30, clock=clock).run_once() == 1


async def test_the_loop_purges_at_start_and_stops(store: SqliteStore, clock: FakeClock) -> None:
    """Started, the loop purges at once; stopped, it leaves no task behind."""
    old = await _ended(store, "old")
    clock.advance(31 * DAY)
    retention = Retention(store, 30, clock=clock, every=3600)
    retention.start()
    for _ in range(200):
        if await store.message(old) is None:
            break
        await asyncio.sleep(0.01)
    assert await store.message(old) is None
    await retention.stop()
    assert await store.acquire(LOCK, "next", 60)  # the lock was released
