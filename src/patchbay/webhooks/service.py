"""The webhook bridge assembled from settings: sources, handlers, inbox, receiver, dispatcher."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType

import httpx
import structlog

from patchbay.errors import ConfigError, PatchbayError
from patchbay.jobs.model import Claim, Schedule
from patchbay.jobs.store import Store
from patchbay.settings import Settings, SourceSettings
from patchbay.webhooks.dispatcher import Dispatcher
from patchbay.webhooks.inbox import Inbox, Source
from patchbay.webhooks.router import Router
from patchbay.webhooks.routes import Receiver
from patchbay.webhooks.stats import HookStats
from patchbay.webhooks.verify import Scheme
from patchbay.webhooks.zoho_channels import ChannelRenewal

log = structlog.get_logger("patchbay.webhooks")


class Hooks:
    """Everything the webhook bridge runs in one worker process."""

    def __init__(
        self, settings: Settings, store: Store, *, clock: Callable[[], float] = time.time
    ) -> None:
        hooks = settings.webhooks
        self.store = store
        self.stats = HookStats()
        self.sources = {
            s.name: build_source(s, hooks.retry_delays, hooks.jitter) for s in hooks.sources
        }
        self.receiver = Receiver(self.sources, Inbox(store, clock), self.stats, clock)
        self.clock = clock
        self.http: httpx.AsyncClient | None = None
        self.renewal: ChannelRenewal | None = None
        self.settings = settings
        self.dispatcher = Dispatcher(
            store,
            self.sources,
            concurrency=hooks.concurrency,
            timeout=hooks.handler_timeout,
            lease=settings.jobs.lease,
            poll_interval=settings.jobs.poll_interval,
            on_start=self._started,
            on_outcome=self._finished,
        )

    async def start(self) -> None:
        """Start running handlers, and renewing Zoho channels if a source has one."""
        self.dispatcher.start()
        if any(source.channel_id for source in self.settings.webhooks.sources):
            self.http = httpx.AsyncClient(timeout=self.settings.crm.timeout)
            self.renewal = ChannelRenewal(self.settings, self.store, http=self.http)
            try:
                await self.renewal.start()
            except PatchbayError as exc:  # Zoho or the store is down: the next tick tries again
                log.error("cannot schedule Zoho channel renewals", error=exc.message)

    async def stop(self, drain: float) -> None:
        """Stop renewing and running handlers (letting running ones finish within ``drain``)."""
        if self.renewal is not None:
            await self.renewal.stop()
        if self.http is not None:
            await self.http.aclose()
        await self.dispatcher.stop(drain)

    def _started(self, claim: Claim) -> None:
        if claim.job.attempts == 1:
            received = float(claim.message.meta.get("received_at", claim.message.created_at))
            self.stats.queue_lag.record(max(0.0, self.clock() - received))

    def _finished(self, claim: Claim, outcome: str, seconds: float) -> None:
        meta = claim.message.meta
        self.stats.outcome(str(meta.get("source")), str(meta.get("event")), outcome, seconds)


def build_source(
    settings: SourceSettings, retry_delays: tuple[float, ...], jitter: float
) -> Source:
    """A source's run-time form: its scheme, its loaded handlers, its retry schedule."""
    scheme = Scheme(
        provider=settings.provider,
        secrets=settings.secrets,
        tolerance=settings.tolerance,
        legacy_sha1=settings.legacy_sha1,
        max_signatures=settings.max_signatures,
        header=settings.header.lower(),
        template=settings.template,
        encoding=settings.encoding,
        prefix=settings.prefix,
        timestamp_header=settings.timestamp_header.lower(),
        id_header=settings.id_header.lower(),
        algorithm=settings.algorithm,
        channels=settings.channels,
    )
    where = f"webhooks.sources.{settings.name}.handlers"
    router = Router(*(load_router(spec, where) for spec in settings.handlers))
    return Source(
        name=settings.name,
        scheme=scheme,
        router=router,
        max_body_bytes=settings.max_body_bytes,
        schedule=Schedule(settings.retry_delays or retry_delays, jitter),
    )


def load_router(spec: str, where: str) -> Router:
    """Import ``package.module:attribute`` (a Router) or ``package.module`` (its functions).

    The current directory is importable, as with ``python -m``: a project's handlers module
    next to its settings file needs no installing.
    """
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r}: {exc}") from exc
    if not attribute:
        found = getattr(module, "router", None)
        return found if isinstance(found, Router) else Router.from_module(module)
    target = getattr(module, attribute, None)
    if isinstance(target, Router):
        return target
    if isinstance(target, ModuleType):
        return Router.from_module(target)
    raise ConfigError(f"{where}: {spec!r} is not a patchbay.webhooks.Router")
