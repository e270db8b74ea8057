"""The inbox: a verified delivery becomes one durable message and one job per matching handler.

Message and jobs are written in one transaction (no dual write between an inbox and a queue),
and ``(stream, key)`` is unique, so a provider's retry or two copies racing through two worker
processes store one delivery. The dedup key only stops duplicate *intake*: each handler's job has
its own status and retries (the dj-stripe#832 trap is a dedup key used as a "done" flag).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from patchbay.jobs.model import Message, NewJob, Put, Schedule
from patchbay.jobs.store import Store
from patchbay.webhooks.envelope import REDACTED, Envelope, redact
from patchbay.webhooks.router import Context, Route, Router
from patchbay.webhooks.verify import Scheme

log = structlog.get_logger("patchbay.webhooks")
QUEUE = "hooks"
STREAM_PREFIX = "hooks/"


@dataclass(frozen=True, slots=True)
class Source:
    """A configured source at run time: its scheme, handlers and limits."""

    name: str
    scheme: Scheme
    router: Router
    max_body_bytes: int
    schedule: Schedule

    @property
    def stream(self) -> str:
        """The stream its deliveries are stored in."""
        return STREAM_PREFIX + self.name


class Inbox:
    """Stores deliveries durably; ``accept`` returns only after the commit."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    async def accept(
        self, source: Source, envelope: Envelope, headers: Mapping[str, str], body: bytes
    ) -> tuple[Put, int]:
        """Store one delivery; return what the store did and how many handler runs it made."""
        received = self.clock()
        routes = source.router.match(source.name, envelope.event)
        if any(route.ordering_key is not None for route in routes):
            probe = Context(
                source=source.name,
                event=envelope.event,
                delivery_key=envelope.delivery_key,
                payload=envelope.payload,
                body=body,
                headers=headers,
                attempt=0,
                received_at=received,
            )
            jobs = tuple(
                NewJob(queue=QUEUE, task=route.name, ordering_key=_ordering_key(route, probe))
                for route in routes
            )
        else:
            # The usual case: no key function to ask, so no context to build for one.
            jobs = tuple(NewJob(queue=QUEUE, task=route.name) for route in routes)
        message = Message(
            stream=source.stream,
            key=envelope.delivery_key,
            body=body,
            meta={
                "source": source.name,
                "event": envelope.event,
                "content_type": envelope.content_type,
                "headers": _redacted(headers),
                "received_at": received,
            },
            jobs=jobs,
        )
        return await self.store.put(message), len(jobs)


def _redacted(headers: Mapping[str, str]) -> dict[str, str]:
    """``redact(headers)``, deciding once per set of header names instead of per delivery."""
    secret = _secret_names(tuple(headers))
    return {name: REDACTED if name in secret else value for name, value in headers.items()}


@functools.lru_cache(maxsize=256)
def _secret_names(names: tuple[str, ...]) -> frozenset[str]:
    # A provider sends the same header names with every delivery; ``redact`` scans each name
    # for eight words (3 µs a delivery), so its verdict is kept per set of names.
    probe = redact(dict.fromkeys(names, ""))
    return frozenset(name for name, value in probe.items() if value == REDACTED)


def _ordering_key(route: Route, context: Context) -> str | None:
    if route.ordering_key is None:
        return None
    try:
        key = route.ordering_key(context)
    except Exception:
        # Storing the delivery matters more than its order: keep it, and say why it is unordered.
        log.exception("ordering key function failed", handler=route.name)
        return None
    return None if key is None else str(key)
