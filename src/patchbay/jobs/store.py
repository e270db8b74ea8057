"""The job store's contract, which the SQLite and PostgreSQL stores both keep.

Every method that changes state has committed durably when it returns (``put`` is
group-committed: concurrent calls share one transaction and one fsync). Only the lease owner may
finish a job: ``succeed``, ``fail`` and ``extend`` answer False when the lease was lost (it
expired and another owner claimed the job), and change nothing then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import orjson

from patchbay.errors import StoreUnavailable
from patchbay.jobs.model import (
    Claim,
    Job,
    Message,
    NewJob,
    Put,
    Selection,
    Status,
    StoredMessage,
)

PURGE_BATCH: Final = 500  # messages looked at per purge transaction


class Store(Protocol):
    """Durable messages and their jobs."""

    async def open(self) -> None:
        """Connect and create the schema if it is missing."""

    async def close(self) -> None:
        """Finish pending commits and release every connection."""

    async def put(self, message: Message) -> Put:
        """Store a message and its jobs, unless ``(stream, key)`` exists: then change nothing."""

    async def claim(self, queue: str, owner: str, *, limit: int, lease: float) -> list[Claim]:
        """Lease up to ``limit`` runnable jobs of ``queue`` to ``owner`` for ``lease`` seconds.

        Runnable: pending with ``run_at`` passed, or running with an expired lease; and no earlier
        job (smaller id) of the same queue, task and ordering key is pending or running. Each
        claim adds one to ``attempts``. Oldest ``run_at`` first.
        """

    async def extend(
        self, job_id: int, owner: str, lease: float, *, attempt: int | None = None
    ) -> bool:
        """Push the lease of a running job further, if ``owner`` still holds it.

        ``attempt`` (the claim's ``job.attempts``), when given, must match too: an owner that
        claimed the same job again after its lease expired cannot finish it with the old claim.
        """

    async def succeed(self, job_id: int, owner: str, *, attempt: int | None = None) -> bool:
        """Mark a job succeeded, if ``owner`` still holds its lease (and ``attempt`` matches)."""

    async def fail(
        self,
        job_id: int,
        owner: str,
        *,
        error: str,
        retry_in: float | None,
        attempt: int | None = None,
    ) -> bool:
        """Record a failed attempt: pending again in ``retry_in`` seconds, or dead when None."""

    async def replay(self, selection: Selection) -> int:
        """Make the selected jobs that are not running pending again, due now; return how many.

        Attempts start again from zero; the last error is kept until the next attempt.
        """

    async def drop(self, selection: Selection) -> int:
        """Delete the selected jobs that are not running; return how many."""

    async def purge(self, before: float, *, batch: int = PURGE_BATCH) -> int:
        """Delete the messages stored before ``before`` whose jobs have all ended; return how many.

        Their jobs (succeeded or dead) go with them; a message with a pending or running job
        stays. The store works through the oldest messages ``batch`` at a time, each batch its
        own short transaction, so that intake never waits for a long delete. A purged message's
        key can be stored again: keep messages longer than any sender's redelivery window.
        """

    async def jobs(self, selection: Selection, *, limit: int = 100) -> list[Job]:
        """The selected jobs, newest first."""

    async def message(self, message_id: int) -> StoredMessage | None:
        """One stored message."""

    async def counts(self, queue: str | None = None) -> dict[Status, int]:
        """How many jobs are in each status (every status present, zero if none)."""

    async def wait(self, queue: str, seconds: float) -> None:
        """Return when jobs of ``queue`` may have become runnable, or after ``seconds``."""

    # Shared state: what every worker process (and, on PostgreSQL, every instance) must agree
    # on: a cached access token, one refresh at a time, one rate budget for an outside account.

    async def get_value(self, key: str) -> Value | None:
        """The value stored under ``key``, unless it is missing or expired."""

    async def set_value(self, key: str, data: bytes, *, expires_at: float | None = None) -> None:
        """Store ``data`` under ``key`` (replacing any), until ``expires_at`` if given."""

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lock ``name`` for ``ttl`` seconds if it is free, expired or already ours.

        Taking it again as its owner extends it. Never blocks: False means someone else has it.
        """

    async def release(self, name: str, owner: str) -> None:
        """Free the lock ``name`` if ``owner`` holds it."""

    async def take(self, bucket: str, limit: int, window: float) -> float:
        """Spend one call from a sliding-window budget of ``limit`` calls per ``window`` seconds.

        Returns 0.0 and records the call when fewer than ``limit`` were recorded in the last
        ``window`` seconds; otherwise records nothing and returns the seconds until the oldest
        of them leaves the window. Atomic across processes and instances.
        """


__all__ = [
    "Claim",
    "Job",
    "Message",
    "Put",
    "Selection",
    "Status",
    "Store",
    "StoreUnavailable",
    "StoredMessage",
    "Value",
]


@dataclass(frozen=True, slots=True)
class Value:
    """A stored value and when it expires (None: never)."""

    data: bytes
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Row:
    """A message ready for a group commit: serialised first, so a bad one fails alone."""

    stream: str
    key: str
    body: bytes
    meta: str
    now: float
    jobs: tuple[NewJob, ...]

    @classmethod
    def of(cls, message: Message, now: float) -> Row:
        """Serialise ``message``, stamped with the time ``put`` was called."""
        return cls(
            stream=message.stream,
            key=message.key,
            body=bytes(message.body),
            meta=orjson.dumps(dict(message.meta)).decode(),
            now=now,
            jobs=tuple(message.jobs),
        )


def check_budget(limit: int, window: float) -> None:
    """Refuse a budget that ``Store.take`` cannot honour."""
    if limit < 1 or not window > 0:
        raise ValueError(f"a budget needs limit >= 1 and window > 0, not {limit} per {window}")


def connect(url: str, *, clock: Callable[[], float] = time.time) -> Store:
    """The store a URL names: ``sqlite:///path`` or ``postgresql://...``."""
    scheme, _, _ = url.partition("://")
    if scheme == "sqlite":
        from patchbay.jobs.sqlite import SqliteStore
        from patchbay.sql.backends.sqlite import sqlite_path

        path = sqlite_path(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # a fresh state directory
        return SqliteStore(path, clock=clock)
    if scheme in ("postgresql", "postgres"):
        from patchbay.jobs.postgres import PostgresStore

        return PostgresStore(url, clock=clock)
    raise ValueError(f"no job store for {url!r}")
