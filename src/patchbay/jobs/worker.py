"""A worker: claims jobs of one queue, runs them with bounded concurrency, records each outcome.

Each claimed job runs on its own task under a per-task timeout; its lease is extended while it
runs, so a slow job is not taken over by another worker, and a worker that dies simply stops
extending: the lease expires and the job becomes claimable again. One keeper task per worker
extends the leases of all its running jobs every third of a lease (a task per job cost a task's
creation and cancellation for every job, most of which end long before their first extension).
Outcomes:

- the code returns: ``succeed``;
- it raises ``Retry(after=...)``: pending again after ``after`` (or the schedule's delay), unless
  the schedule's attempts are spent: then dead;
- it raises ``Fail``: dead at once;
- it raises anything else or times out: pending again after the schedule's next delay, or dead
  when the schedule is spent.

Only the lease owner can record an outcome (the store checks it), so a job taken over after an
expired lease is never finished twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from patchbay.errors import StoreUnavailable
from patchbay.jobs.model import Claim, Fail, Retry, Schedule
from patchbay.jobs.store import Store

log = structlog.get_logger("patchbay.jobs")
Run = Callable[[Claim], Awaitable[None]]
MAX_ERROR_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Policy:
    """How one task's runs behave."""

    schedule: Schedule = field(default_factory=Schedule)
    timeout: float = 30.0


class Worker:
    """Runs the jobs of ``queue`` through ``run`` until stopped."""

    def __init__(
        self,
        store: Store,
        queue: str,
        run: Run,
        *,
        policy: Callable[[str], Policy],
        concurrency: int = 16,
        lease: float = 60.0,
        poll_interval: float = 0.5,
        rng: random.Random | None = None,
        on_start: Callable[[Claim], None] | None = None,
        on_outcome: Callable[[Claim, str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.run = run
        self.policy = policy
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.rng = rng or random.Random()
        self.on_start = on_start
        self.on_outcome = on_outcome
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.running: set[asyncio.Task[None]] = set()
        self._leases: dict[int, int] = {}  # running job id -> the claim's attempt, while kept
        self._keeper: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._slot_free = asyncio.Event()

    def start(self) -> None:
        """Begin claiming in the background."""
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._claim_loop())
        self._keeper = loop.create_task(self._keep_leases())

    async def stop(self, drain: float = 5.0) -> None:
        """Stop claiming; let running jobs finish for up to ``drain`` seconds, then cancel them.

        A cancelled job keeps its lease until it expires, then another worker runs it again.
        """
        self._stopping = True
        self._slot_free.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self.running:
            await asyncio.wait(list(self.running), timeout=drain)
        for task in list(self.running):
            task.cancel()
        if self.running:
            await asyncio.wait(list(self.running), timeout=1.0)
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper

    async def _claim_loop(self) -> None:
        while not self._stopping:
            free = self.concurrency - len(self.running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                claims = await self.store.claim(
                    self.queue, self.owner, limit=free, lease=self.lease
                )
            except StoreUnavailable as exc:
                log.warning("job store unavailable", queue=self.queue, error=str(exc))
                await asyncio.sleep(self.poll_interval)
                continue
            for claim in claims:
                task = asyncio.get_running_loop().create_task(self._execute(claim))
                self.running.add(task)
                task.add_done_callback(self._done)
            if not claims:
                await self.store.wait(self.queue, self.poll_interval)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self._slot_free.set()

    async def _execute(self, claim: Claim) -> None:
        job = claim.job
        policy = self.policy(job.task)
        if self.on_start is not None:
            self.on_start(claim)
        self._leases[job.id] = job.attempts
        began = time.monotonic()
        retry_in: float | None
        try:
            async with asyncio.timeout(policy.timeout):
                await self.run(claim)
        except Retry as exc:
            # Asking for a retry does not buy attempts beyond the schedule's.
            retry_in = self._delay(policy, job.attempts)
            if retry_in is not None and exc.after is not None:
                retry_in = exc.after
            outcome, error = ("retry" if retry_in is not None else "dead"), exc.reason
        except Fail as exc:
            retry_in, outcome, error = None, "dead", _describe(exc)
        except TimeoutError as exc:
            retry_in = self._delay(policy, job.attempts)
            outcome = "retry" if retry_in is not None else "dead"
            error = f"timed out after {policy.timeout:g} s" + _trace(exc)
        except asyncio.CancelledError:
            self._leases.pop(job.id, None)
            raise
        except Exception as exc:
            retry_in = self._delay(policy, job.attempts)
            outcome = "retry" if retry_in is not None else "dead"
            error = _describe(exc)
        else:
            outcome, error, retry_in = "succeeded", "", None
        finally:
            self._leases.pop(job.id, None)
        elapsed = time.monotonic() - began
        try:
            if outcome == "succeeded":
                kept = await self.store.succeed(job.id, self.owner, attempt=job.attempts)
            else:
                kept = await self.store.fail(
                    job.id,
                    self.owner,
                    error=error[:MAX_ERROR_CHARS],
                    retry_in=retry_in,
                    attempt=job.attempts,
                )
        except StoreUnavailable as exc:
            # The lease will expire and the job run again: at least once, never lost.
            log.warning("cannot record a job outcome", job=job.id, error=str(exc))
            return
        if not kept:
            log.warning("lease lost before the outcome was recorded", job=job.id, task=job.task)
            return
        level = log.debug if outcome == "succeeded" else log.warning
        level(
            "job " + outcome,
            queue=self.queue,
            job=job.id,
            task=job.task,
            attempt=job.attempts,
            seconds=round(elapsed, 4),
            retry_in=None if retry_in is None else round(retry_in, 3),
            error=error.splitlines()[0] if error else None,
        )
        if self.on_outcome is not None:
            self.on_outcome(claim, outcome, elapsed)

    def _delay(self, policy: Policy, attempts: int) -> float | None:
        return policy.schedule.next_delay(attempts, self.rng)

    async def _keep_leases(self) -> None:
        """Every third of a lease, extend the lease of every job still running.

        A job is extended at most a third of a lease after it was claimed or last extended; a
        job that finished meanwhile is skipped, and one whose lease was lost (it expired and
        another owner claimed it) is no longer extended.
        """
        while True:
            await asyncio.sleep(self.lease / 3)
            held = list(self._leases.items())
            if not held:
                continue
            kept = await asyncio.gather(
                *(
                    self.store.extend(job_id, self.owner, self.lease, attempt=attempt)
                    for job_id, attempt in held
                ),
                return_exceptions=True,
            )
            for (job_id, attempt), ok in zip(held, kept, strict=True):
                if ok is False and self._leases.get(job_id) == attempt:
                    del self._leases[job_id]
                elif isinstance(ok, BaseException) and not isinstance(ok, StoreUnavailable):
                    log.warning("cannot extend a lease", job=job_id, error=str(ok))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" + _trace(exc)


def _trace(exc: BaseException) -> str:
    return "\n" + "".join(traceback.format_exception(exc)).rstrip()
