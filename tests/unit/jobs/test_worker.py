"""The job worker: outcomes, timeouts, bounded concurrency, lease keeping, and stopping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from patchbay.jobs.model import Claim, Fail, Message, NewJob, Retry, Schedule, Selection, Status
from patchbay.jobs.sqlite import SqliteStore
from patchbay.jobs.worker import Policy, Worker

FAST = Policy(schedule=Schedule((0.05, 0.05), jitter=0), timeout=1.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A fresh SQLite job store."""
    opened = SqliteStore(tmp_path / "jobs.db")
    await opened.open()
    yield opened
    await opened.close()


async def put(store: SqliteStore, key: str, *tasks: str) -> None:
    """Store one message with one job per task."""
    jobs = tuple(NewJob(queue="q", task=task) for task in tasks or ("t",))
    await store.put(Message(stream="s", key=key, body=b"", jobs=jobs))


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Poll an async condition."""
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - the store has no event to wait on
            await asyncio.sleep(0.01)


async def statuses(store: SqliteStore) -> list[tuple[str, Status, int]]:
    """(task, status, attempts) of every job, oldest first."""
    jobs = await store.jobs(Selection(queue="q"), limit=1000)
    return sorted((j.task, j.status, j.attempts) for j in jobs)


def worker(
    store: SqliteStore,
    run: Callable[[Claim], Awaitable[None]],
    policy: Policy = FAST,
    **options: float,
) -> Worker:
    """A worker on queue ``q`` with a fast schedule."""
    return Worker(store, "q", run, policy=lambda task: policy, poll_interval=0.02, **options)  # type: ignore[arg-type]


async def test_success_is_recorded(store: SqliteStore) -> None:
    """A job whose code returns is succeeded after one attempt."""
    seen: list[int] = []

    async def run(claim: Claim) -> None:
        seen.append(claim.job.attempts)

    w = worker(store, run)
    w.start()
    await put(store, "a")
    await until(lambda: _done(store, 1))
    await w.stop()
    assert seen == [1]
    assert await statuses(store) == [("t", Status.SUCCEEDED, 1)]


async def test_exceptions_retry_until_the_schedule_is_spent(store: SqliteStore) -> None:
    """Any exception retries on the schedule; after the last delay the job is dead."""

    async def run(claim: Claim) -> None:
        raise RuntimeError("nope")

    w = worker(store, run)
    w.start()
    await put(store, "a")
    await until(lambda: _dead(store, 1))
    await w.stop()
    [job] = await store.jobs(Selection(queue="q"))
    assert (job.status, job.attempts) == (Status.DEAD, 3)
    assert job.last_error is not None
    assert job.last_error.startswith("RuntimeError: nope")


async def test_fail_goes_dead_at_once(store: SqliteStore) -> None:
    """``Fail`` is not retried."""

    async def run(claim: Claim) -> None:
        raise Fail("never")

    w = worker(store, run)
    w.start()
    await put(store, "a")
    await until(lambda: _dead(store, 1))
    await w.stop()
    assert await statuses(store) == [("t", Status.DEAD, 1)]


async def test_retry_after_is_honoured(store: SqliteStore) -> None:
    """``Retry(after=...)`` waits that long, not the schedule's delay."""
    times: list[float] = []

    async def run(claim: Claim) -> None:
        times.append(asyncio.get_running_loop().time())
        if claim.job.attempts == 1:
            raise Retry(after=0.3)

    w = worker(store, run)
    w.start()
    await put(store, "a")
    await until(lambda: _done(store, 1))
    await w.stop()
    assert len(times) == 2
    assert times[1] - times[0] >= 0.29


async def test_timeout_counts_as_a_failure(store: SqliteStore) -> None:
    """A job past its timeout is cancelled and retried."""

    async def run(claim: Claim) -> None:
        if claim.job.attempts == 1:
            await asyncio.sleep(10)

    w = worker(store, run, Policy(schedule=Schedule((0.01,), 0), timeout=0.1))
    w.start()
    await put(store, "a")
    await until(lambda: _done(store, 1))
    await w.stop()
    [job] = await store.jobs(Selection(queue="q"))
    assert job.attempts == 2
    assert job.last_error is not None
    assert "timed out after 0.1 s" in job.last_error


async def test_concurrency_is_bounded(store: SqliteStore) -> None:
    """No more than ``concurrency`` jobs run at once."""
    running = peak = 0

    async def run(claim: Claim) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    w = worker(store, run, concurrency=3)
    w.start()
    for n in range(20):
        await put(store, f"m{n}")
    await until(lambda: _done(store, 20))
    await w.stop()
    assert peak == 3


async def test_a_long_job_keeps_its_lease(store: SqliteStore) -> None:
    """A job running past its lease extends it, so no other worker takes it over."""
    runs = 0

    async def run(claim: Claim) -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.5)

    first = worker(store, run, lease=0.15)
    second = worker(store, run, lease=0.15)
    first.start()
    second.start()
    await put(store, "a")
    await until(lambda: _done(store, 1))
    await asyncio.gather(first.stop(), second.stop())
    assert runs == 1


async def test_stop_lets_running_jobs_finish(store: SqliteStore) -> None:
    """Stopping waits for the jobs in progress, within the drain time."""
    finished = asyncio.Event()

    async def run(claim: Claim) -> None:
        await asyncio.sleep(0.1)
        finished.set()

    w = worker(store, run)
    w.start()
    await put(store, "a")
    await until(lambda: _running(store))
    await w.stop(drain=2)
    assert finished.is_set()
    assert await statuses(store) == [("t", Status.SUCCEEDED, 1)]


async def _done(store: SqliteStore, n: int) -> bool:
    return (await store.counts("q"))[Status.SUCCEEDED] == n


async def _dead(store: SqliteStore, n: int) -> bool:
    return (await store.counts("q"))[Status.DEAD] == n


async def _running(store: SqliteStore) -> bool:
    return (await store.counts("q"))[Status.RUNNING] > 0


async def test_retry_requests_do_not_outlive_the_schedule(store: SqliteStore) -> None:
    """``Retry`` forever still ends dead once the schedule's attempts are spent."""

    async def run(claim: Claim) -> None:
        raise Retry(after=0.01)

    w = worker(store, run)
    w.start()
    await put(store, "a")
    await until(lambda: _dead(store, 1))
    await w.stop()
    assert await statuses(store) == [("t", Status.DEAD, 3)]
