"""Fixtures of the CRM tests: one manual clock for everyone, a fake sleep, a SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from patchbay.emulators.zoho import ManualClock
from patchbay.jobs.sqlite import SqliteStore


class FakeSleep:
    """``asyncio.sleep`` in virtual time: moves the shared clock forward by the seconds asked.

    Concurrent sleepers each move it, so time may run faster than a real sleep would make it,
    never slower (nobody wakes early); the event loop still gets a turn in between.
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> ManualClock:
    """The one clock of the emulator, the store and the client."""
    return ManualClock()


@pytest.fixture
def sleep(clock: ManualClock) -> FakeSleep:
    """A sleep that advances ``clock`` instead of waiting."""
    return FakeSleep(clock)


@pytest.fixture
async def store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[SqliteStore]:
    """An open SQLite job store on the shared clock."""
    opened = SqliteStore(tmp_path / "jobs.db", clock=clock)
    await opened.open()
    yield opened
    await opened.close()
