"""One limiter for every Zoho CRM API call the server makes: concurrency and calls per minute.

Zoho limits an organisation, not a process (zoho.md 2.5): its edition allows a number of calls
in flight per app (5 to 25; more gets HTTP 429), and the seed's rule allowed 60 upload calls in
any minute and blocked the API for 5 minutes after that (zoho.md 1; the emulator enforces it).
So the budget must be shared by every worker process and, with a PostgreSQL store, by every
instance. The job store provides what that takes (``crm.oauth.SharedState``): locks with a
lease and an atomic sliding-window budget.

- **Calls per minute** (``crm.calls_per_minute``; 0: off): every API request counts (the seed's
  rule counted uploads; counting lists, downloads and retries too is the safe reading, and the
  emulator's rule, which counts POSTs, is then never reached). Before each request,
  ``store.take("zoho-calls", n, 61)`` spends one call of the window; when it is spent, the caller
  sleeps the seconds ``take`` names (plus up to 50 ms of jitter, so waiting processes do not all
  ask again at once) and asks again. The window is one second longer than Zoho's minute: a call
  is counted when its turn is given, and reaches Zoho a little later, so the extra second keeps
  every minute as Zoho counts it within the limit (assuming Zoho counts a call when it
  arrives). A turn that was counted more than that second before the caller got it back (a
  stalled event loop, a slow store) is not used: it stays spent and another is taken.
- **Concurrency** (``crm.concurrency``): N store locks ``crm-slot-0`` .. ``crm-slot-{N-1}``, one
  held by each request in flight, each with a lease (``slot_ttl``, 60 s) that a keeper task
  renews every third of it while the request runs (a 20 MB upload can outlast any fixed lease),
  so a crashed process holds its slots one lease at most. Chosen over a per-process semaphore
  of concurrency/workers because that needs the number of workers *and* instances, and strands
  capacity: with one busy worker and seven idle ones, the busy one would get an eighth of the
  edition's calls. The cost is two store writes per call (take the slot, give it back; a third
  for the per-minute turn) and polling when all slots are taken, cheap next to a Zoho call. To keep the polling cheap, one task per
  process hunts for a slot at a time (the others queue behind an asyncio lock, in order), trying
  every slot from a random start (so processes do not collide on ``crm-slot-0``), then sleeping
  20 ms, doubling to 0.5 s, with jitter. A per-process semaphore of N sits in front, so no more
  than N tasks of one process queue for the store at all.
- **Without a store** (tests, tools) both limits hold for this process alone.

Order per call: the local semaphore, a slot, then the per-minute turn (so the turn is taken
right before sending, not while queueing for a slot). Token refreshes go to the accounts server
and take neither: they have their own budget (``crm.oauth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog

from patchbay.crm.oauth import RefreshBudget, SharedState, unique_owner
from patchbay.errors import PatchbayError

log = structlog.get_logger("patchbay.crm")

CALLS_BUCKET: Final = "zoho-calls"
SLOT_PREFIX: Final = "crm-slot-"
WINDOW: Final = 60.0  # the seed's minute
MARGIN: Final = 1.0  # seconds added to it: a call reaches Zoho a little after its turn
SLOT_TTL: Final = 60.0
POLL_FIRST: Final = 0.02
POLL_MAX: Final = 0.5
JITTER: Final = 0.05


@dataclass(frozen=True, slots=True)
class Slot:
    """A store slot held by one request, and the task renewing its lease."""

    name: str
    owner: str
    keeper: asyncio.Task[None]


class CallLimiter:
    """Admits Zoho CRM API calls within the edition's concurrency and the per-minute rule."""

    def __init__(
        self,
        *,
        concurrency: int,
        calls_per_minute: int = 0,
        store: SharedState | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        slot_ttl: float = SLOT_TTL,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1 or calls_per_minute < 0 or slot_ttl <= 0:
            raise ValueError("a limiter needs concurrency >= 1, calls_per_minute >= 0, ttl > 0")
        self.concurrency = concurrency
        self.calls_per_minute = calls_per_minute
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.slot_ttl = slot_ttl
        self.window = WINDOW + MARGIN
        self.rng = rng or random.Random()
        self.owner = unique_owner("crm-call")
        self.in_flight = 0  # requests of this process inside ``call``, for stats and tests
        self.waits = 0  # times a call waited for its per-minute turn
        self._local = asyncio.Semaphore(concurrency)
        self._hunt = asyncio.Lock()
        self._ids = itertools.count(1)
        # Without a store the per-minute window is this process's own (RefreshBudget is a
        # plain sliding window).
        self._own_window = (
            RefreshBudget(calls_per_minute, self.window)
            if calls_per_minute and store is None
            else None
        )

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Hold a place for one request while the block runs (the request and its answer)."""
        async with self._local:
            slot = await self._take_slot()
            try:
                await self._turn()
                self.in_flight += 1
                try:
                    yield
                finally:
                    self.in_flight -= 1
            finally:
                await self._give_back(slot)

    async def _turn(self) -> None:
        # Wait until the sliding minute has room for one more call, then count it.
        if not self.calls_per_minute:
            return
        while True:
            counted_at = self.clock()
            if self.store is not None:
                wait = await self.store.take(CALLS_BUCKET, self.calls_per_minute, self.window)
            else:
                assert self._own_window is not None
                wait = self._own_window.wait(counted_at)
                if wait <= 0:
                    self._own_window.spend(counted_at)
            if wait <= 0:
                if self.clock() - counted_at <= MARGIN:
                    return
                # The turn was counted too long ago (a stalled loop, a slow store) for the
                # margin to cover it: it stays spent, and a fresh one is taken.
                continue
            self.waits += 1
            await self.sleep(wait + self.rng.uniform(0, JITTER))

    async def _take_slot(self) -> Slot | None:
        store = self.store
        if store is None:
            return None
        owner = f"{self.owner}:{next(self._ids)}"
        delay = POLL_FIRST
        async with self._hunt:
            while True:
                first = self.rng.randrange(self.concurrency)
                for i in range(self.concurrency):
                    name = f"{SLOT_PREFIX}{(first + i) % self.concurrency}"
                    if await store.acquire(name, owner, self.slot_ttl):
                        keeper = asyncio.get_running_loop().create_task(
                            self._keep(store, name, owner)
                        )
                        return Slot(name, owner, keeper)
                await self.sleep(delay * (0.5 + self.rng.random()))
                delay = min(delay * 2, POLL_MAX)

    async def _keep(self, store: SharedState, name: str, owner: str) -> None:
        # Real time, not the injected sleep: the lease is about how long the request really
        # runs, and a test's fake sleep would spin here.
        while True:
            await asyncio.sleep(self.slot_ttl / 3)
            try:
                if not await store.acquire(name, owner, self.slot_ttl):
                    log.warning("crm slot lost: its lease ran out", slot=name)
                    return
            except PatchbayError as exc:
                log.warning("crm slot lease not renewed", slot=name, error=str(exc))

    async def _give_back(self, slot: Slot | None) -> None:
        if slot is None or self.store is None:
            return
        slot.keeper.cancel()
        await asyncio.wait([slot.keeper])  # never raises, so our own cancellation is not eaten
        try:
            await self.store.release(slot.name, slot.owner)
        except PatchbayError as exc:
            # Its lease frees it soon enough; the call itself went fine.
            log.warning("crm slot not released", slot=slot.name, error=str(exc))
