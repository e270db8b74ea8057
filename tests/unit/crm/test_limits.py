"""The server-wide limiter: calls per sliding minute and concurrency, shared through the store."""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import Sequence

import pytest

from patchbay.crm.limits import SLOT_PREFIX, CallLimiter
from patchbay.emulators.zoho import ManualClock
from patchbay.jobs.sqlite import SqliteStore
from tests.unit.crm.conftest import FakeSleep


def busiest_minute(times: Sequence[float], window: float = 60.0) -> int:
    """The most calls in any half-open window of ``window`` seconds."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


async def test_sixty_per_sliding_minute_through_the_store(
    store: SqliteStore, clock: ManualClock, sleep: FakeSleep
) -> None:
    """200 calls from two processes never exceed 60 in any sliding 60 s."""
    limiters = [
        CallLimiter(
            concurrency=10,
            calls_per_minute=60,
            store=store,
            clock=clock,
            sleep=sleep,
            rng=random.Random(i),
        )
        for i in range(2)
    ]
    times: list[float] = []

    async def one(limiter: CallLimiter) -> None:
        async with limiter.call():
            times.append(clock())

    await asyncio.gather(*(one(limiters[i % 2]) for i in range(200)))
    assert len(times) == 200
    assert busiest_minute(times) <= 60
    assert busiest_minute(times) >= 55  # and it is not needlessly slow


async def test_sixty_per_sliding_minute_without_a_store(
    clock: ManualClock, sleep: FakeSleep
) -> None:
    """Without a store the same rule holds within the process."""
    limiter = CallLimiter(concurrency=5, calls_per_minute=60, clock=clock, sleep=sleep)
    times: list[float] = []

    async def one() -> None:
        async with limiter.call():
            times.append(clock())

    await asyncio.gather(*(one() for _ in range(200)))
    assert busiest_minute(times) <= 60 and limiter.waits > 0


async def test_off_when_zero(clock: ManualClock, sleep: FakeSleep) -> None:
    """calls_per_minute = 0 waits for nothing."""
    limiter = CallLimiter(concurrency=2, calls_per_minute=0, clock=clock, sleep=sleep)
    for _ in range(100):
        async with limiter.call():
            pass
    assert sleep.slept == [] and limiter.waits == 0


async def test_concurrency_across_processes(store: SqliteStore, clock: ManualClock) -> None:
    """Three slots for the server: two processes never have more than three calls in flight."""
    limiters = [CallLimiter(concurrency=3, store=store, clock=clock) for _ in range(2)]
    in_flight = 0
    peak = 0

    async def one(limiter: CallLimiter) -> None:
        nonlocal in_flight, peak
        async with limiter.call():
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.005)
            in_flight -= 1

    await asyncio.gather(*(one(limiters[i % 2]) for i in range(30)))
    assert peak == 3


async def test_a_failed_call_gives_its_slot_back(store: SqliteStore, clock: ManualClock) -> None:
    """An exception or a cancellation inside the block frees the slot."""
    limiter = CallLimiter(concurrency=1, store=store, clock=clock)
    with pytest.raises(RuntimeError):
        async with limiter.call():
            raise RuntimeError("boom")
    entered = asyncio.Event()

    async def hang() -> None:
        async with limiter.call():
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(hang())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.acquire(f"{SLOT_PREFIX}0", "someone", 10)


async def test_a_crashed_holder_frees_its_slot_after_the_lease(
    store: SqliteStore, clock: ManualClock, sleep: FakeSleep
) -> None:
    """A slot left by a dead process is taken once its lease (store clock) has run out."""
    assert await store.acquire(f"{SLOT_PREFIX}0", "crashed", 30)
    limiter = CallLimiter(concurrency=1, store=store, clock=clock, sleep=sleep)
    start = clock()
    async with limiter.call():
        assert 30 <= clock() - start < 31


async def test_the_lease_is_renewed_while_a_call_runs(store: SqliteStore) -> None:
    """A call longer than the lease keeps its slot: the keeper renews it."""
    limiter = CallLimiter(concurrency=1, store=store, slot_ttl=0.15)
    async with limiter.call():
        await asyncio.sleep(0.4)  # well past the 0.15 s lease
        assert not await store.acquire(f"{SLOT_PREFIX}0", "intruder", 10)
