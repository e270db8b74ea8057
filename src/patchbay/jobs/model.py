"""The durable job model, pure: states, values, retry schedules and the handler's own outcomes.

A *message* is one durable record (a webhook delivery, a push send, an upload request) stored
once per ``(stream, key)``; its *jobs* are the units of work it fans out to (one per webhook
handler, for instance), each with its own status, attempts and retry time, so one failing job
never re-runs another whose success was committed.

    pending ──claim──▶ running ──succeed──▶ succeeded
       ▲                  │
       └──fail (retry)────┤ (lease expired: claimable again, as if pending)
                          └──fail (no retry left, or Fail)──▶ dead ──replay──▶ pending

Nothing here does I/O; time is always passed in.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

# Standard Webhooks' schedule (about three days in all), the default for every queue.
DEFAULT_DELAYS: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


class Status(StrEnum):
    """Where a job is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


class Retry(Exception):
    """Raised by a job's code: run me again, ``after`` seconds from now if given."""

    def __init__(self, after: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.after = after
        self.reason = reason


class Fail(Exception):
    """Raised by a job's code: this can never succeed; go to the dead letters at once."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """When to try again: one delay per retry, each shortened by a random jitter fraction."""

    delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.delays):
            raise ValueError("retry delays must not be negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per delay."""
        return len(self.delays) + 1

    def next_delay(self, attempts: int, rng: random.Random | None = None) -> float | None:
        """Seconds to wait after ``attempts`` failed attempts, or None when none are left."""
        if attempts < 1 or attempts > len(self.delays):
            return None
        delay = self.delays[attempts - 1]
        draw = (rng or random).random()
        return delay * (1.0 - self.jitter * draw)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to create with its message: ``task`` names the code that runs it in ``queue``."""

    queue: str
    task: str
    ordering_key: str | None = None  # jobs of one (queue, task, key) run one at a time, in order
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Message:
    """A durable record and the jobs it fans out to, stored once per ``(stream, key)``."""

    stream: str
    key: str
    body: bytes
    meta: Mapping[str, Any] = field(default_factory=dict)  # JSON-serialisable
    jobs: tuple[NewJob, ...] = ()


@dataclass(frozen=True, slots=True)
class Put:
    """What storing a message did: its id, and whether it was new (else a duplicate)."""

    message_id: int
    created: bool


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored."""

    id: int
    stream: str
    key: str
    body: bytes
    meta: Mapping[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class Job:
    """A job as stored; ``attempts`` counts claims, so the running attempt's number is it."""

    id: int
    message_id: int
    queue: str
    task: str
    status: Status
    attempts: int
    run_at: float
    ordering_key: str | None
    last_error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Claim:
    """A job leased to one owner until ``lease_until``, with its message."""

    job: Job
    message: StoredMessage
    lease_until: float


@dataclass(frozen=True, slots=True)
class Selection:
    """Which jobs an operator means; every field given narrows it, none given means all."""

    queue: str | None = None
    job_ids: Sequence[int] = ()
    message_ids: Sequence[int] = ()
    stream: str | None = None
    key: str | None = None
    task: str | None = None
    statuses: Sequence[Status] = ()
    since: float | None = None  # created_at >= since
    until: float | None = None  # created_at < until
