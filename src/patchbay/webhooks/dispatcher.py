"""The dispatcher: runs each (delivery, handler) job of the inbox through the job worker.

``async def`` handlers run on the event loop; plain ``def`` handlers on a thread, so a blocking
handler never stalls intake. A handler's timeout cancels an async handler; a thread cannot be
cancelled, so a sync handler past its timeout is recorded as failed (and retried) while its thread
runs to its end. Handlers that are no longer registered (a deploy removed them) fail their runs,
which end in the dead letters where an operator sees them, rather than silently vanishing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from patchbay.jobs.model import Claim, Fail, Schedule
from patchbay.jobs.store import Store
from patchbay.jobs.worker import Policy, Worker
from patchbay.webhooks.envelope import open_envelope
from patchbay.webhooks.inbox import QUEUE, Source
from patchbay.webhooks.router import Context, Route

log = structlog.get_logger("patchbay.webhooks")


class Dispatcher:
    """Claims the inbox's handler runs and executes them."""

    def __init__(
        self,
        store: Store,
        sources: Mapping[str, Source],
        *,
        concurrency: int,
        timeout: float,
        lease: float,
        poll_interval: float,
        rng: random.Random | None = None,
        on_start: Callable[[Claim], None] | None = None,
        on_outcome: Callable[[Claim, str, float], None] | None = None,
    ) -> None:
        self.sources = sources
        self.timeout = timeout
        self.worker = Worker(
            store,
            QUEUE,
            self.run,
            policy=self.policy,
            concurrency=concurrency,
            lease=lease,
            poll_interval=poll_interval,
            rng=rng,
            on_start=on_start,
            on_outcome=on_outcome,
        )

    def start(self) -> None:
        """Begin running handlers in the background."""
        self.worker.start()

    async def stop(self, drain: float = 5.0) -> None:
        """Stop claiming and let running handlers finish for up to ``drain`` seconds."""
        await self.worker.stop(drain)

    def policy(self, task: str) -> Policy:
        """The retry schedule and timeout of one handler."""
        for source in self.sources.values():
            route = source.router.route(task)
            if route is not None:
                schedule = source.schedule
                if route.retry_delays is not None:
                    schedule = Schedule(route.retry_delays, schedule.jitter)
                return Policy(schedule=schedule, timeout=route.timeout or self.timeout)
        return Policy(timeout=self.timeout)

    async def run(self, claim: Claim) -> None:
        """Run one handler on one delivery."""
        meta: Mapping[str, Any] = claim.message.meta
        source = self.sources.get(str(meta.get("source")))
        if source is None:
            raise Fail(f"source {meta.get('source')!r} is no longer configured")
        route = source.router.route(claim.job.task)
        if route is None:
            raise Fail(f"handler {claim.job.task} is no longer registered for {source.name}")
        headers = dict(meta.get("headers") or {})
        envelope = open_envelope(source.scheme, headers, claim.message.body)
        context = Context(
            source=source.name,
            event=str(meta.get("event", envelope.event)),
            delivery_key=claim.message.key,
            payload=envelope.payload,
            body=claim.message.body,
            headers=headers,
            attempt=claim.job.attempts,
            received_at=float(meta.get("received_at", claim.message.created_at)),
        )
        await call(route, context)


async def call(route: Route, context: Context) -> None:
    """Call a handler, on a thread when it is a plain function."""
    if route.is_async:
        result = route.handler(context)
        if result is not None:
            await result
        return
    outcome = await asyncio.to_thread(route.handler, context)
    if asyncio.iscoroutine(outcome):  # a def that returns an awaitable: await it on the loop
        await outcome
