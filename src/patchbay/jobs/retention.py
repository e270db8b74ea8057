"""Retention: messages whose jobs have all ended are purged from the job store after N days.

Every worker of every instance runs this loop, but one purge runs at a time: the store's lock
``purge`` goes to one process, and the others skip that round. The purge itself works in short
windows (``Store.purge``), so deliveries keep being stored while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Final

import structlog

from patchbay.jobs.store import Store

log = structlog.get_logger("patchbay.jobs")

DAY: Final = 86400.0
EVERY: Final = 3600.0  # seconds between two purges
LOCK: Final = "purge"


class Retention:
    """Purges the store's ended messages older than ``days``, every ``every`` seconds."""

    def __init__(
        self,
        store: Store,
        days: float,
        *,
        clock: Callable[[], float] = time.time,
        every: float = EVERY,
    ) -> None:
        self.store = store
        self.days = days
        self.clock = clock
        self.every = every
        self.owner = f"retention-{os.getpid()}-{id(self)}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Purge now and then every ``every`` seconds, in the background."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop purging (a purge in progress stops between two windows' statements)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int | None:
        """Purge once; how many messages went, or None when another process was purging."""
        if not await self.store.acquire(LOCK, self.owner, self.every):
            return None
        try:
            return await self.store.purge(self.clock() - self.days * DAY)
        finally:
            await self.store.release(LOCK, self.owner)

    async def _loop(self) -> None:
        while True:
            try:
                purged = await self.run_once()
            except Exception as exc:  # the store may be down for a while: try again next round
                log.warning("purge failed", error=str(exc))
            else:
                if purged:
                    log.info("purged", messages=purged, older_than_days=self.days)
            await asyncio.sleep(self.every)
