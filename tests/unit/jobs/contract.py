"""The job store contract: one suite that every ``Store`` must pass.

A test module subclasses ``StoreContract`` and supplies the ``opener`` fixture: a function that
opens one more store on the same storage (two calls stand for two Patchbay instances, or two
workers of one), all sharing the test's fake clock and all closed after the test. Leases and
retry times are tested by moving that clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

import pytest

from patchbay.jobs.model import Job, Message, NewJob, Selection, Status
from patchbay.jobs.store import Store, StoreUnavailable, Value

START = 1_700_000_000.0
LEASE = 30.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


Opener = Callable[[], Awaitable[Store]]


class AttemptChecked(Protocol):
    """The optional ``attempt`` check both stores add to ``Store``'s finishing calls."""

    async def extend(
        self, job_id: int, owner: str, lease: float, *, attempt: int | None = None
    ) -> bool: ...

    async def succeed(self, job_id: int, owner: str, *, attempt: int | None = None) -> bool: ...

    async def fail(
        self,
        job_id: int,
        owner: str,
        *,
        error: str,
        retry_in: float | None,
        attempt: int | None = None,
    ) -> bool: ...


def job(
    task: str = "send", *, queue: str = "q", key: str | None = None, delay: float = 0.0
) -> NewJob:
    """A job to create with a message."""
    return NewJob(queue=queue, task=task, ordering_key=key, delay=delay)


def message(
    key: str,
    *jobs: NewJob,
    stream: str = "orders",
    body: bytes = b"{}",
    meta: Mapping[str, Any] | None = None,
) -> Message:
    """A message with the given jobs (one default job when none are given)."""
    return Message(stream=stream, key=key, body=body, meta=meta or {}, jobs=jobs or (job(),))


async def jobs_of(store: Store, message_id: int) -> list[Job]:
    """A message's jobs, oldest first."""
    return sorted(await store.jobs(Selection(message_ids=[message_id])), key=lambda j: j.id)


async def only_job(store: Store, message_id: int) -> Job:
    """The one job of a message."""
    (found,) = await jobs_of(store, message_id)
    return found


async def claim_ids(store: Store, owner: str = "w1", *, queue: str = "q") -> list[int]:
    """Claim everything runnable in ``queue``; return the ids of the jobs' messages."""
    claims = await store.claim(queue, owner, limit=100, lease=LEASE)
    return [c.message.id for c in claims]


async def kill(store: Store, message_id: int) -> None:
    """Claim a message's only job and fail it for good."""
    found = await only_job(store, message_id)
    claims = await store.claim(found.queue, "killer", limit=100, lease=LEASE)
    assert found.id in {c.job.id for c in claims}
    for c in claims:
        if c.job.id == found.id:
            assert await store.fail(c.job.id, "killer", error="fatal", retry_in=None)
        else:
            assert await store.fail(c.job.id, "killer", error="not now", retry_in=0)


async def settle(store: Store, queue: str, quiet: float = 0.1) -> None:
    """Absorb the wake-ups already sent (some stores get theirs late): wait until one times out."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await store.wait(queue, quiet)
        if loop.time() - start >= quiet * 0.9:
            return


class StoreContract:
    """What every store must do; a subclass supplies the ``opener`` fixture."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The clock every store of the test reads."""
        return FakeClock()

    @pytest.fixture
    async def store(self, opener: Opener) -> Store:
        """One open store."""
        return await opener()

    # -- put -----------------------------------------------------------------------------------

    async def test_put_stores_a_message_once(self, store: Store, clock: FakeClock) -> None:
        """A second put of the same (stream, key) changes nothing and says it was a duplicate."""
        first = await store.put(message("a", body=b"hello", meta={"n": 1, "tags": ["x", "é"]}))
        assert first.created
        again = await store.put(message("a", job("other"), body=b"changed"))
        assert again.message_id == first.message_id
        assert not again.created
        stored = await store.message(first.message_id)
        assert stored is not None
        assert (stored.stream, stored.key, stored.body) == ("orders", "a", b"hello")
        assert stored.meta == {"n": 1, "tags": ["x", "é"]}
        assert stored.created_at == clock.now
        assert [j.task for j in await jobs_of(store, first.message_id)] == ["send"]
        assert await store.message(first.message_id + 1000) is None

    async def test_same_key_in_another_stream_is_another_message(self, store: Store) -> None:
        """Deduplication is per stream."""
        a = await store.put(message("k", stream="one"))
        b = await store.put(message("k", stream="two"))
        assert a.created
        assert b.created
        assert a.message_id != b.message_id

    async def test_concurrent_duplicates_store_one_message(self, store: Store) -> None:
        """Many puts of one key at once (one group commit) give one message and one job."""
        puts = await asyncio.gather(*(store.put(message("same")) for _ in range(20)))
        assert sum(p.created for p in puts) == 1
        assert len({p.message_id for p in puts}) == 1
        assert (await store.counts())[Status.PENDING] == 1

    async def test_concurrent_puts_all_commit(self, store: Store) -> None:
        """Concurrent puts of distinct keys all resolve created, with distinct ids."""
        puts = await asyncio.gather(*(store.put(message(f"k{i}")) for i in range(50)))
        assert all(p.created for p in puts)
        assert len({p.message_id for p in puts}) == 50
        assert (await store.counts())[Status.PENDING] == 50

    async def test_a_bad_message_fails_alone(self, store: Store) -> None:
        """A message that cannot be stored fails its own put, not the puts batched with it."""
        not_json, not_text, good = await asyncio.gather(
            store.put(message("bad", meta={"x": object()})),
            store.put(message("bad\ud800")),
            store.put(message("good")),
            return_exceptions=True,
        )
        assert isinstance(not_json, TypeError)
        assert isinstance(not_text, Exception)
        assert not isinstance(not_text, StoreUnavailable)
        assert not isinstance(good, BaseException)
        assert good.created
        assert (await store.counts())[Status.PENDING] == 1

    async def test_duplicate_job_in_one_message_is_stored_once(self, store: Store) -> None:
        """A message listing the same (queue, task) twice gets that job once."""
        put = await store.put(message("twice", job("a"), job("a")))
        assert [j.task for j in await jobs_of(store, put.message_id)] == ["a"]

    async def test_close_commits_queued_puts(self, opener: Opener) -> None:
        """Puts still waiting for their commit when the store closes are committed first."""
        store = await opener()
        tasks = [asyncio.create_task(store.put(message(f"k{i}"))) for i in range(20)]
        await asyncio.sleep(0)
        await store.close()
        assert all(put.created for put in await asyncio.gather(*tasks))
        assert (await (await opener()).counts())[Status.PENDING] == 20

    # -- claim ---------------------------------------------------------------------------------

    async def test_claim_leases_and_counts_attempts(self, store: Store, clock: FakeClock) -> None:
        """A claim leases the job to its owner, marks it running and adds one attempt."""
        put = await store.put(message("a", body=b"payload"))
        (claim,) = await store.claim("q", "w1", limit=10, lease=LEASE)
        assert claim.job.status is Status.RUNNING
        assert claim.job.attempts == 1
        assert claim.job.message_id == put.message_id
        assert claim.lease_until == clock.now + LEASE
        assert claim.message.body == b"payload"
        assert await store.claim("q", "w2", limit=10, lease=LEASE) == []
        assert (await only_job(store, put.message_id)).status is Status.RUNNING

    async def test_claim_takes_oldest_run_at_first_up_to_limit(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Claims come oldest ``run_at`` first, at most ``limit``, and only from their queue."""
        late = await store.put(message("late", job(delay=3)))
        early = await store.put(message("early", job(delay=1)))
        middle = await store.put(message("middle", job(delay=2)))
        other = await store.put(message("other", job(queue="elsewhere")))
        clock.advance(5)
        assert await store.claim("q", "w", limit=0, lease=LEASE) == []
        first = await store.claim("q", "w", limit=2, lease=LEASE)
        assert [c.message.id for c in first] == [early.message_id, middle.message_id]
        assert await claim_ids(store) == [late.message_id]
        assert await claim_ids(store, queue="elsewhere") == [other.message_id]

    async def test_delayed_job_is_not_due_early(self, store: Store, clock: FakeClock) -> None:
        """A job created with a delay is claimable only once the delay has passed."""
        put = await store.put(message("a", job(delay=10)))
        assert (await only_job(store, put.message_id)).run_at == clock.now + 10
        clock.advance(9.5)
        assert await claim_ids(store) == []
        clock.advance(0.5)
        assert await claim_ids(store) == [put.message_id]

    async def test_expired_lease_is_claimable_and_old_owner_loses(
        self, store: Store, clock: FakeClock
    ) -> None:
        """After a lease expires another owner may claim; the old owner can then finish nothing."""
        await store.put(message("a"))
        (old,) = await store.claim("q", "old", limit=1, lease=10)
        clock.advance(9)
        assert await store.claim("q", "new", limit=1, lease=10) == []
        clock.advance(1)
        (new,) = await store.claim("q", "new", limit=1, lease=10)
        assert new.job.id == old.job.id
        assert new.job.attempts == 2
        assert not await store.succeed(old.job.id, "old")
        assert not await store.fail(old.job.id, "old", error="late", retry_in=None)
        assert not await store.extend(old.job.id, "old", 10)
        assert await store.succeed(new.job.id, "new")
        assert (await only_job(store, new.message.id)).status is Status.SUCCEEDED

    async def test_an_owners_stale_attempt_cannot_finish(
        self, store: Store, clock: FakeClock
    ) -> None:
        """With ``attempt``, an owner's expired claim cannot finish its own later claim."""
        checked = cast(AttemptChecked, store)
        await store.put(message("a"))
        (stale,) = await store.claim("q", "w", limit=1, lease=10)
        clock.advance(10)
        (current,) = await store.claim("q", "w", limit=1, lease=10)
        assert (stale.job.attempts, current.job.attempts) == (1, 2)
        job_id = current.job.id
        assert not await checked.extend(job_id, "w", 10, attempt=1)
        assert not await checked.fail(job_id, "w", error="stale", retry_in=None, attempt=1)
        assert not await checked.succeed(job_id, "w", attempt=1)
        assert await checked.extend(job_id, "w", 10, attempt=2)
        assert await checked.succeed(job_id, "w", attempt=2)

    async def test_extend_keeps_the_lease(self, store: Store, clock: FakeClock) -> None:
        """Extending a lease keeps others from claiming until the new end."""
        await store.put(message("a"))
        (claim,) = await store.claim("q", "w1", limit=1, lease=10)
        clock.advance(8)
        assert await store.extend(claim.job.id, "w1", 10)
        clock.advance(8)
        assert await store.claim("q", "w2", limit=1, lease=10) == []
        clock.advance(2)
        assert len(await store.claim("q", "w2", limit=1, lease=10)) == 1

    # -- finish --------------------------------------------------------------------------------

    async def test_fail_retries_then_dies(self, store: Store, clock: FakeClock) -> None:
        """A failure with ``retry_in`` makes the job pending then; with None it is dead."""
        put = await store.put(message("a"))
        (claim,) = await store.claim("q", "w", limit=1, lease=LEASE)
        assert await store.fail(claim.job.id, "w", error="boom", retry_in=60)
        retried = await only_job(store, put.message_id)
        assert retried.status is Status.PENDING
        assert retried.run_at == clock.now + 60
        assert retried.last_error == "boom"
        assert retried.attempts == 1
        clock.advance(59)
        assert await claim_ids(store) == []
        clock.advance(1)
        (claim,) = await store.claim("q", "w", limit=1, lease=LEASE)
        assert claim.job.attempts == 2
        assert await store.fail(claim.job.id, "w", error="fatal", retry_in=None)
        dead = await only_job(store, put.message_id)
        assert (dead.status, dead.last_error) == (Status.DEAD, "fatal")
        clock.advance(10_000)
        assert await claim_ids(store) == []
        assert (await store.counts())[Status.DEAD] == 1

    async def test_a_job_finishes_once(self, store: Store) -> None:
        """Succeed, fail and extend answer False for a job that is no longer running."""
        await store.put(message("a"))
        (claim,) = await store.claim("q", "w", limit=1, lease=LEASE)
        assert await store.succeed(claim.job.id, "w")
        assert not await store.succeed(claim.job.id, "w")
        assert not await store.fail(claim.job.id, "w", error="x", retry_in=0)
        assert not await store.extend(claim.job.id, "w", LEASE)
        assert not await store.succeed(claim.job.id + 1000, "w")

    async def test_concurrent_successes_each_get_their_answer(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Successes sent together (one batch) answer for their own job, each job once."""
        checked = cast(AttemptChecked, store)
        await asyncio.gather(*(store.put(message(f"k{i}")) for i in range(20)))
        claims = await store.claim("q", "w", limit=20, lease=LEASE)
        assert len(claims) == 20
        ids = [c.job.id for c in claims]
        answers = await asyncio.gather(
            *(store.succeed(i, "w") for i in ids[:10]),
            store.succeed(ids[10], "w"),
            store.succeed(ids[10], "w"),  # the same job twice at once: one of them wins
            store.succeed(ids[11], "someone else"),
            checked.succeed(ids[12], "w", attempt=2),  # not this claim's attempt
            store.succeed(ids[0] + 1000, "w"),
        )
        assert answers[:10] == [True] * 10
        assert sorted(answers[10:12]) == [False, True]
        assert answers[12:] == [False, False, False]
        assert (await store.counts())[Status.SUCCEEDED] == 11
        finished = {j.id: j for j in await store.jobs(Selection(statuses=[Status.SUCCEEDED]))}
        assert set(finished) == {*ids[:11]}
        assert all(j.updated_at == clock.now for j in finished.values())
        # The jobs not finished are still leased to their owner, and can still be.
        assert await store.succeed(ids[11], "w")
        assert await checked.succeed(ids[12], "w", attempt=1)

    async def test_a_succeeded_sibling_is_never_rerun(self, store: Store, clock: FakeClock) -> None:
        """Of two jobs of one message, retrying the failing one never runs the other again."""
        put = await store.put(message("a", job("ok"), job("flaky")))
        claims = {c.job.task: c for c in await store.claim("q", "w", limit=10, lease=LEASE)}
        assert set(claims) == {"ok", "flaky"}
        assert await store.succeed(claims["ok"].job.id, "w")
        flaky = claims["flaky"].job.id
        assert await store.fail(flaky, "w", error="e", retry_in=1)
        for _ in range(3):
            clock.advance(1)
            again = await store.claim("q", "w", limit=10, lease=LEASE)
            assert [c.job.id for c in again] == [flaky]
            assert await store.fail(flaky, "w", error="e", retry_in=1)
        clock.advance(1)
        (last,) = await store.claim("q", "w", limit=10, lease=LEASE)
        assert await store.succeed(last.job.id, "w")
        clock.advance(LEASE * 10)
        assert await claim_ids(store) == []
        by_task = {j.task: j for j in await jobs_of(store, put.message_id)}
        assert by_task["ok"].attempts == 1
        assert by_task["flaky"].attempts == 5
        assert {j.status for j in by_task.values()} == {Status.SUCCEEDED}

    # -- ordering keys -------------------------------------------------------------------------

    async def test_ordering_key_runs_one_at_a_time_in_order(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Jobs of one key wait for every earlier one, even through a retry, and finish in order."""
        first, second, third = [
            (await store.put(message(f"m{i}", job(key="customer-1")))).message_id for i in range(3)
        ]
        free = (await store.put(message("free"))).message_id
        other = (await store.put(message("other", job(key="customer-2")))).message_id
        claimed = await store.claim("q", "w", limit=10, lease=LEASE)
        assert sorted(c.message.id for c in claimed) == sorted([first, free, other])
        head = next(c for c in claimed if c.message.id == first)
        assert await store.fail(head.job.id, "w", error="e", retry_in=5)
        assert await claim_ids(store) == []  # the first is not due, the second must wait
        clock.advance(5)
        assert await claim_ids(store) == [first]
        for expected in (first, second, third):
            if expected != first:
                assert await claim_ids(store) == [expected]
            assert await claim_ids(store) == []  # the next waits for this one
            assert await store.succeed((await only_job(store, expected)).id, "w1")

    async def test_ordering_key_dead_job_unblocks_the_next(self, store: Store) -> None:
        """A job of a key that went dead no longer holds back the next one."""
        first = (await store.put(message("m1", job(key="k")))).message_id
        second = (await store.put(message("m2", job(key="k")))).message_id
        (claim,) = await store.claim("q", "w", limit=10, lease=LEASE)
        assert claim.message.id == first
        assert await store.fail(claim.job.id, "w", error="fatal", retry_in=None)
        assert await claim_ids(store) == [second]

    async def test_ordering_key_expired_lease_still_blocks(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A running job whose lease expired is claimable itself and still holds back the next."""
        first = (await store.put(message("m1", job(key="k")))).message_id
        await store.put(message("m2", job(key="k")))
        assert await claim_ids(store, "w1") == [first]
        clock.advance(LEASE)
        assert await claim_ids(store, "w2") == [first]

    async def test_ordering_is_per_queue_and_task(self, store: Store) -> None:
        """The same key in another task or queue is another sequence."""
        a = (await store.put(message("m1", job("a", key="k")))).message_id
        b = (await store.put(message("m2", job("b", key="k")))).message_id
        c = (await store.put(message("m3", job("a", key="k", queue="q2")))).message_id
        await store.put(message("m4", job("a", key="k")))
        assert sorted(await claim_ids(store)) == sorted([a, b])
        assert await claim_ids(store, queue="q2") == [c]

    # -- operators -----------------------------------------------------------------------------

    async def test_replay_by_job_id(self, store: Store, clock: FakeClock) -> None:
        """Replay makes a dead job pending and due now, attempts from zero, error kept."""
        put = await store.put(message("a"))
        await kill(store, put.message_id)
        dead = await only_job(store, put.message_id)
        clock.advance(100)
        assert await store.replay(Selection(job_ids=[dead.id])) == 1
        replayed = await only_job(store, put.message_id)
        assert replayed.status is Status.PENDING
        assert (replayed.attempts, replayed.last_error) == (0, "fatal")
        assert replayed.run_at == clock.now
        (claim,) = await store.claim("q", "w", limit=1, lease=LEASE)
        assert claim.job.attempts == 1
        assert await store.replay(Selection(job_ids=[dead.id])) == 0  # running: left alone
        assert await store.succeed(claim.job.id, "w")
        assert await store.replay(Selection(job_ids=[dead.id])) == 1  # succeeded: run again
        assert await claim_ids(store) == [put.message_id]

    async def test_replay_by_message_id(self, store: Store) -> None:
        """Replay by message id takes every job of the message that is not running."""
        put = await store.put(message("a", job("x"), job("y")))
        other = await store.put(message("b"))
        for c in await store.claim("q", "w", limit=10, lease=LEASE):
            await store.fail(c.job.id, "w", error="e", retry_in=None)
        assert await store.replay(Selection(message_ids=[put.message_id])) == 2
        assert {j.status for j in await jobs_of(store, put.message_id)} == {Status.PENDING}
        assert (await only_job(store, other.message_id)).status is Status.DEAD

    async def test_replay_dead_jobs(self, store: Store) -> None:
        """Replay by status takes only the dead jobs, in the queue given."""
        dead = [(await store.put(message(f"d{i}"))).message_id for i in range(3)]
        for message_id in dead:
            await kill(store, message_id)
        await store.put(message("pending"))
        await store.put(message("elsewhere", job(queue="q2")))
        await kill(store, (await store.put(message("dead2", job(queue="q2")))).message_id)
        counts = await store.counts("q")
        assert (counts[Status.DEAD], counts[Status.PENDING]) == (3, 1)
        assert await store.replay(Selection(queue="q", statuses=[Status.DEAD])) == 3
        assert (await store.counts("q"))[Status.PENDING] == 4
        assert (await store.counts("q2"))[Status.DEAD] == 1

    async def test_replay_by_stream_and_time_window(self, store: Store, clock: FakeClock) -> None:
        """Replay by stream and [since, until) takes the jobs created in that window."""
        t0 = clock.now
        ids: dict[str, int] = {}
        for name, stream, at in [
            ("before", "hooks", 0),
            ("inside", "hooks", 10),
            ("other", "push", 10),
            ("at-end", "hooks", 20),
        ]:
            clock.now = t0 + at
            ids[name] = (await store.put(message(name, stream=stream))).message_id
        for message_id in ids.values():
            await kill(store, message_id)
        window = Selection(stream="hooks", since=t0 + 5, until=t0 + 20)
        assert await store.replay(window) == 1
        assert (await only_job(store, ids["inside"])).status is Status.PENDING
        assert await store.replay(Selection(stream="hooks", key="before")) == 1
        assert (await only_job(store, ids["before"])).status is Status.PENDING
        assert (await store.counts())[Status.DEAD] == 2

    async def test_drop(self, store: Store) -> None:
        """Drop deletes the selected jobs that are not running; the message stays deduplicated."""
        dead = (await store.put(message("dead"))).message_id
        await kill(store, dead)
        running = (await store.put(message("running"))).message_id
        assert await claim_ids(store) == [running]
        await store.put(message("pending"))
        running_job = await only_job(store, running)
        assert await store.drop(Selection(job_ids=[running_job.id])) == 0
        assert await store.drop(Selection(statuses=[Status.DEAD])) == 1
        assert await jobs_of(store, dead) == []
        assert not (await store.put(message("dead"))).created
        assert await store.drop(Selection()) == 1  # everything but the running job
        counts = await store.counts()
        assert counts == {Status.PENDING: 0, Status.RUNNING: 1, Status.SUCCEEDED: 0, Status.DEAD: 0}

    async def test_purge_deletes_old_messages_whose_jobs_ended(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Purge takes old messages with only ended jobs (or none); waiting and new ones stay."""
        done = (await store.put(message("done"))).message_id
        (claim,) = await store.claim("q", "w", limit=1, lease=LEASE)
        assert await store.succeed(claim.job.id, "w")
        dead = (await store.put(message("dead"))).message_id
        await kill(store, dead)
        bare = (
            await store.put(Message(stream="orders", key="bare", body=b"{}", meta={}))
        ).message_id
        pending = (await store.put(message("pending"))).message_id
        running = (await store.put(message("running", job(queue="r")))).message_id
        assert await claim_ids(store, queue="r") == [running]
        mixed = (await store.put(message("mixed", job("a"), job("b", delay=3600)))).message_id
        clock.advance(10)
        cutoff = clock.now
        clock.advance(10)
        new = (await store.put(message("new"))).message_id
        (claim,) = [
            c for c in await store.claim("q", "w", limit=100, lease=LEASE) if c.message.id == new
        ]
        assert await store.succeed(claim.job.id, "w")
        assert await store.purge(cutoff) == 3  # done, dead, bare
        for gone in (done, dead, bare):
            assert await store.message(gone) is None
            assert await jobs_of(store, gone) == []
        for kept in (pending, running, mixed, new):
            assert await store.message(kept) is not None
        assert len(await jobs_of(store, mixed)) == 2
        assert (await store.put(message("done"))).created  # its key is free again
        assert await store.purge(cutoff) == 0

    async def test_purge_works_through_many_windows(self, store: Store, clock: FakeClock) -> None:
        """Purge goes on past its batch size until it reaches messages newer than the cutoff."""
        ids = [(await store.put(message(f"m{i}", job(queue="none")))).message_id for i in range(7)]
        await store.drop(Selection())  # no jobs left: every message is done with
        clock.advance(1)
        cutoff = clock.now
        later = (await store.put(message("later", job(queue="none")))).message_id
        await store.drop(Selection())
        assert await store.purge(cutoff, batch=2) == 7
        assert [await store.message(i) for i in ids] == [None] * 7
        assert await store.message(later) is not None

    async def test_counts_every_status(self, store: Store) -> None:
        """Counts name every status, per queue or over all."""
        zero = {status: 0 for status in Status}
        assert await store.counts() == zero
        await store.put(message("a", job("x"), job("y"), job("z", queue="q2")))
        (claim, *_) = await store.claim("q", "w", limit=1, lease=LEASE)
        assert await store.succeed(claim.job.id, "w")
        assert await store.counts("q") == {**zero, Status.PENDING: 1, Status.SUCCEEDED: 1}
        assert await store.counts("q2") == {**zero, Status.PENDING: 1}
        assert await store.counts() == {**zero, Status.PENDING: 2, Status.SUCCEEDED: 1}
        assert await store.counts("none") == zero

    async def test_jobs_filters_newest_first(self, store: Store, clock: FakeClock) -> None:
        """``jobs`` narrows by every field given and lists the newest first, up to ``limit``."""
        t0 = clock.now
        a = (await store.put(message("a", job("x"), job("y"), stream="s1"))).message_id
        clock.advance(10)
        b = (await store.put(message("b", job("x", queue="q2"), stream="s2"))).message_id
        await kill(store, b)
        everything = await store.jobs(Selection())
        assert [j.message_id for j in everything] == [b, a, a]
        assert [j.id for j in everything] == sorted((j.id for j in everything), reverse=True)
        assert len(await store.jobs(Selection(), limit=2)) == 2
        assert {j.task for j in await store.jobs(Selection(queue="q"))} == {"x", "y"}
        assert [j.queue for j in await store.jobs(Selection(task="x"))] == ["q2", "q"]
        assert [j.message_id for j in await store.jobs(Selection(stream="s2"))] == [b]
        assert [j.message_id for j in await store.jobs(Selection(key="b"))] == [b]
        assert [j.message_id for j in await store.jobs(Selection(statuses=[Status.DEAD]))] == [b]
        both = Selection(statuses=[Status.DEAD, Status.PENDING])
        assert len(await store.jobs(both)) == 3
        assert [j.message_id for j in await store.jobs(Selection(since=t0 + 1))] == [b]
        assert {j.message_id for j in await store.jobs(Selection(until=t0 + 1))} == {a}
        narrow = Selection(queue="q", task="y", stream="s1", message_ids=[a, b])
        (y,) = await store.jobs(narrow)
        assert (await store.jobs(Selection(job_ids=[y.id, y.id + 1000]))) == [y]

    # -- waiting -------------------------------------------------------------------------------

    async def test_wait_wakes_on_put(self, store: Store) -> None:
        """A waiter on a queue wakes when a put creates jobs of that queue."""
        waiter = asyncio.create_task(store.wait("q", 30))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await store.put(message("a"))
        async with asyncio.timeout(5):
            await waiter

    async def test_wait_wakes_on_replay(self, store: Store) -> None:
        """A waiter wakes when a replay makes jobs of its queue due."""
        put = await store.put(message("a"))
        await kill(store, put.message_id)
        await settle(store, "q")
        waiter = asyncio.create_task(store.wait("q", 30))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await store.replay(Selection(message_ids=[put.message_id]))
        async with asyncio.timeout(5):
            await waiter

    async def test_wait_times_out(self, store: Store) -> None:
        """With nothing to do, wait returns after its timeout."""
        async with asyncio.timeout(5):
            await store.wait("idle", 0.05)

    # -- shared values -------------------------------------------------------------------------

    async def test_value_missing_then_stored(self, store: Store) -> None:
        """A key never set has no value; a set one reads back byte for byte, without expiry."""
        assert await store.get_value("token") is None
        await store.set_value("token", b"\x00secret\xff")
        await store.set_value("empty", b"")
        assert await store.get_value("token") == Value(b"\x00secret\xff", None)
        assert await store.get_value("empty") == Value(b"", None)
        assert await store.get_value("other") is None

    async def test_value_expires(self, store: Store, clock: FakeClock) -> None:
        """A value with ``expires_at`` reads back until then, and is gone from that moment."""
        await store.set_value("token", b"a", expires_at=clock.now + 10)
        await store.set_value("forever", b"f")
        clock.advance(9.5)
        assert await store.get_value("token") == Value(b"a", clock.now + 0.5)
        clock.advance(0.5)
        assert await store.get_value("token") is None
        clock.advance(1_000_000)
        assert await store.get_value("forever") == Value(b"f", None)

    async def test_value_set_replaces(self, store: Store, clock: FakeClock) -> None:
        """Setting a key replaces its data and its expiry, even after it expired."""
        await store.set_value("token", b"old", expires_at=clock.now + 10)
        await store.set_value("token", b"new", expires_at=clock.now + 20)
        assert await store.get_value("token") == Value(b"new", clock.now + 20)
        await store.set_value("token", b"forever")
        clock.advance(100)
        assert await store.get_value("token") == Value(b"forever", None)
        await store.set_value("token", b"brief", expires_at=clock.now + 1)
        clock.advance(1)
        assert await store.get_value("token") is None
        await store.set_value("token", b"again", expires_at=clock.now + 1)
        assert await store.get_value("token") == Value(b"again", clock.now + 1)

    async def test_values_are_shared(self, opener: Opener) -> None:
        """A value one store sets is read by another on the same storage."""
        a, b = await opener(), await opener()
        await a.set_value("token", b"shared")
        assert await b.get_value("token") == Value(b"shared", None)

    # -- locks ---------------------------------------------------------------------------------

    async def test_lock_is_taken_once(self, opener: Opener) -> None:
        """A free lock goes to the first owner; another owner, in any store, is refused."""
        a, b = await opener(), await opener()
        assert await a.acquire("refresh", "w1", 10)
        assert not await a.acquire("refresh", "w2", 10)
        assert not await b.acquire("refresh", "w3", 10)
        assert await b.acquire("other", "w3", 10)

    async def test_lock_owner_extends(self, store: Store, clock: FakeClock) -> None:
        """Taking a lock again as its owner succeeds and runs its ``ttl`` from now."""
        assert await store.acquire("refresh", "w1", 10)
        clock.advance(8)
        assert await store.acquire("refresh", "w1", 10)
        clock.advance(9)  # past the first ttl, within the second
        assert not await store.acquire("refresh", "w2", 10)
        clock.advance(1)
        assert await store.acquire("refresh", "w2", 10)

    async def test_lock_expires(self, store: Store, clock: FakeClock) -> None:
        """A lock is free once its ``ttl`` has passed; its old owner then no longer holds it."""
        assert await store.acquire("refresh", "w1", 10)
        clock.advance(9.5)
        assert not await store.acquire("refresh", "w2", 10)
        clock.advance(0.5)
        assert await store.acquire("refresh", "w2", 10)
        assert not await store.acquire("refresh", "w1", 10)

    async def test_lock_released_only_by_owner(self, store: Store) -> None:
        """Release by another owner changes nothing; by the owner it frees the lock."""
        await store.release("refresh", "nobody")  # a lock nobody holds: nothing to do
        assert await store.acquire("refresh", "w1", 10)
        await store.release("refresh", "w2")
        assert not await store.acquire("refresh", "w2", 10)
        await store.release("refresh", "w1")
        assert await store.acquire("refresh", "w2", 10)
        await store.release("refresh", "w1")  # no longer its owner
        assert not await store.acquire("refresh", "w1", 10)

    async def test_racing_owners_get_the_lock_once(self, opener: Opener) -> None:
        """Of many owners in two stores asking for one free lock at once, exactly one gets it."""
        a, b = await opener(), await opener()
        got = await asyncio.gather(
            *((a, b)[i % 2].acquire("refresh", f"w{i}", 10) for i in range(20))
        )
        assert sum(got) == 1

    # -- rate budgets --------------------------------------------------------------------------

    async def test_take_spends_the_budget_then_says_how_long_to_wait(
        self, store: Store, clock: FakeClock
    ) -> None:
        """``limit`` calls fit in a window; the next waits until the oldest leaves it."""
        t0 = clock.now
        assert await store.take("zoho", 3, 10) == 0.0
        clock.advance(2)
        assert await store.take("zoho", 3, 10) == 0.0
        clock.advance(3)
        assert await store.take("zoho", 3, 10) == 0.0
        assert await store.take("zoho", 3, 10) == t0 + 10 - clock.now  # 5 s
        clock.advance(4.5)
        assert await store.take("zoho", 3, 10) == 0.5
        assert await store.take("other", 3, 10) == 0.0  # budgets are per bucket

    async def test_take_frees_calls_as_they_leave_the_window(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A call leaves the window ``window`` seconds after it; refused calls are not recorded."""
        t0 = clock.now
        for at in (0, 2, 5):
            clock.now = t0 + at
            assert await store.take("zoho", 3, 10) == 0.0
        for _ in range(5):
            assert await store.take("zoho", 3, 10) > 0
        clock.now = t0 + 10  # the first call (t0) leaves: room for exactly one
        assert await store.take("zoho", 3, 10) == 0.0
        assert await store.take("zoho", 3, 10) == 2.0  # the call at t0 + 2 leaves next
        clock.now = t0 + 100  # all gone
        assert [await store.take("zoho", 3, 10) for _ in range(4)] == [0.0, 0.0, 0.0, 10.0]

    async def test_concurrent_takes_spend_the_budget_once(self, opener: Opener) -> None:
        """Two stores taking from one bucket at once record exactly ``limit`` calls in total."""
        a, b = await opener(), await opener()
        waits = await asyncio.gather(*((a, b)[i % 2].take("zoho", 60, 60) for i in range(200)))
        assert waits.count(0.0) == 60
        assert set(waits) == {0.0, 60.0}  # the clock stands still: every call leaves in 60 s
