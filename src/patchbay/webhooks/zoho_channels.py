"""Zoho CRM notification channels, kept subscribed: a scheduled job renews them before expiry.

Zoho drops a channel when its ``channel_expiry`` passes (one hour when none is given, a week at
most) and then simply stops notifying, so every zoho source with a ``channel_id`` is renewed
with the Enable API (``POST /crm/v8/actions/watch``, which creates or renews) well before then.

Design:

- **Pure schedule** (no I/O, time passed in). ``margin(lifetime)`` is how much life may be left
  when a channel is renewed: 10 % of its lifetime, at least 5 minutes (Zoho suggests renewing
  about 5 minutes early), at most half of it. ``due(channels, renewals, now)`` says which
  channels need renewing, from when each was last renewed and the expiry Zoho *reported*.
- **Periods, so that many processes renew once.** A channel's time is cut into periods of
  ``lifetime - margin`` seconds, aligned on the epoch: every worker process of every instance
  computes the same period for the same moment without talking to the others. Each process puts
  ``Message(stream="schedule/zoho-channels", key=f"{source}:{period}")`` with one job
  ``renew:<source>`` in queue ``zoho-channels``, due at the period's start; the store keeps one
  message per ``(stream, key)``, so there is exactly one renewal job per period however many
  processes put it, and a ``jobs.worker.Worker`` runs it once. A renewal at the start of period
  ``k`` asks for expiry at ``start(k) + lifetime = start(k + 1) + margin``: the next period's job
  has the whole margin, retries included, to run before the channel would lapse.
- **Ticks.** On ``start`` and then every minute each process puts the messages of the current
  period (due now, so a first deployment or a newly configured source renews at once) and of the
  next one (due at its start). A put of an existing message changes nothing, so ticking is cheap
  and needs no leader.
- **Outcomes.** Rate limits (the refresh budget, Access Denied, HTTP 429), 5xx and network
  errors retry on a short schedule that fits in the margin; refused credentials and refused
  requests (``ZohoAuthError``, ``ZohoApiError``: bad token, invalid channel) go to the dead
  letters at once, since retrying cannot fix settings. A 401 ``INVALID_TOKEN`` is retried once
  with a fresh token first (``crm.oauth.authorized_request``).
- **Zoho's answer beats our request.** The expiry Zoho reports is what counts: if it is so early
  that the channel would need renewing before the next period starts (a clock ahead of Zoho's
  makes a week-long request "more than a week", which Zoho quietly turns into one hour), the job
  asks to run again in time (``Retry(after=...)``). The request itself stays 10 minutes inside
  Zoho's week for the same reason.
- **Limits.** A message key names only the source and period, so a changed ``notify_url`` or
  ``events`` reaches Zoho at the next period, or at once with ``renew_now``. The Enable API adds
  events to a live channel: an event removed from the settings stays subscribed until the channel
  is deleted or expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import orjson
import structlog

from patchbay.crm.oauth import (
    TokenSource,
    ZohoApiError,
    ZohoAuthError,
    ZohoRateLimited,
    ZohoUnavailable,
    api_error,
    authorized_request,
)
from patchbay.errors import NotFound, StoreUnavailable
from patchbay.jobs.model import Claim, Fail, Message, NewJob, Retry, Schedule
from patchbay.jobs.store import Store
from patchbay.jobs.worker import Policy, Worker
from patchbay.settings import Settings, SourceSettings

log = structlog.get_logger("patchbay.webhooks.zoho")

STREAM: Final = "schedule/zoho-channels"
QUEUE: Final = "zoho-channels"
TASK_PREFIX: Final = "renew:"
WATCH_PATH: Final = "/crm/v8/actions/watch"
HOUR: Final = 3600.0
WEEK: Final = 7 * 86400.0
MARGIN_FRACTION: Final = 0.1
MIN_MARGIN: Final = 300.0
CLOCK_SKEW: Final = 600.0  # requests stay this far inside Zoho's one-week limit
MIN_RETRY: Final = 30.0  # never re-run a renewal sooner than this, whatever Zoho reported
# Short, and about two hours in all: a renewal's margin is at least 5 minutes and usually hours,
# and once it is spent the next period's job takes over anyway.
RETRY_DELAYS: Final = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
DEFAULT_TICK: Final = 60.0
EXPIRY_TOLERANCE: Final = 5.0  # seconds Zoho's reported expiry may fall short of our request


# -- the pure part -----------------------------------------------------------------------------


def margin(lifetime: float) -> float:
    """Life that may be left when a channel of ``lifetime`` seconds is renewed."""
    return min(max(MARGIN_FRACTION * lifetime, MIN_MARGIN), lifetime / 2)


@dataclass(frozen=True, slots=True)
class Channel:
    """One configured channel: the source it feeds and what to subscribe."""

    source: str
    channel_id: str
    events: tuple[str, ...]
    notify_url: str
    token: str = field(repr=False)
    lifetime: float = 86400.0

    @classmethod
    def from_source(cls, source: SourceSettings) -> Channel | None:
        """The channel a source configures, if it is a zoho source with a ``channel_id``."""
        if source.provider != "zoho" or not source.channel_id:
            return None
        return cls(
            source=source.name,
            channel_id=source.channel_id,
            events=source.events,
            notify_url=source.notify_url,
            token=source.secrets[0] if source.secrets else "",
            lifetime=source.channel_lifetime,
        )

    @property
    def requested_lifetime(self) -> float:
        """The lifetime each renewal asks for, kept inside Zoho's week despite clock skew."""
        return min(self.lifetime, WEEK - CLOCK_SKEW)

    @property
    def interval(self) -> float:
        """Seconds between scheduled renewals: the lifetime less its margin."""
        lifetime = self.requested_lifetime
        return lifetime - margin(lifetime)

    def period(self, now: float) -> int:
        """The index of the renewal period ``now`` is in."""
        return math.floor(now / self.interval)

    def period_start(self, index: int) -> float:
        """When period ``index`` starts (and its renewal is due)."""
        return index * self.interval

    def watch_item(self, now: float) -> dict[str, Any]:
        """The Enable API's item that renews this channel at ``now``."""
        return {
            "channel_id": int(self.channel_id),  # a long, for Zoho
            "events": list(self.events),
            "notify_url": self.notify_url,
            "token": self.token,
            "channel_expiry": iso(now + self.requested_lifetime),
        }


@dataclass(frozen=True, slots=True)
class Renewal:
    """One successful renewal: when it was made and the expiry Zoho reported."""

    source: str
    renewed_at: float
    expires_at: float

    @property
    def renew_at(self) -> float:
        """When the channel must next be renewed: its margin before the reported expiry."""
        return self.expires_at - margin(max(self.expires_at - self.renewed_at, 0.0))


def due(channels: Iterable[Channel], renewals: Mapping[str, Renewal], now: float) -> list[Channel]:
    """The channels to renew at ``now``: never renewed, or less than their margin left."""
    return [
        channel
        for channel in channels
        if (last := renewals.get(channel.source)) is None or last.renew_at <= now
    ]


def configured(settings: Settings) -> tuple[Channel, ...]:
    """Every channel the settings configure."""
    found = (Channel.from_source(source) for source in settings.webhooks.sources)
    return tuple(channel for channel in found if channel is not None)


def schedule_messages(channel: Channel, now: float) -> tuple[Message, Message]:
    """The messages that schedule the renewals of the current and the next period."""
    current = channel.period(now)
    return (_message(channel, current, now), _message(channel, current + 1, now))


def _message(channel: Channel, index: int, now: float) -> Message:
    start = channel.period_start(index)
    job = NewJob(queue=QUEUE, task=TASK_PREFIX + channel.source, delay=max(0.0, start - now))
    return Message(
        stream=STREAM,
        key=f"{channel.source}:{index}",
        body=b"",
        meta={"source": channel.source, "channel_id": channel.channel_id, "period": index},
        jobs=(job,),
    )


def reported_expiry(status: int, body: bytes, channel_id: str, now: float) -> float:
    """The expiry (epoch seconds) an Enable answer reports for the channel, or its error.

    The earliest of the channel's per-module expiries counts; a success without one means the
    documented default of one hour.
    """
    if status not in (200, 201, 207):
        raise api_error(status, body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    items = data.get("watch") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise ZohoUnavailable(f"the Zoho API answered HTTP {status} without a watch result")
    item = items[0]
    if item.get("status") != "success":
        raise ZohoApiError(
            f"Zoho refused channel {channel_id}: {item.get('code')}: {item.get('message')}",
            http_status=status,
            zoho_code=str(item.get("code", "")),
            details=item.get("details"),
        )
    details = item.get("details")
    events = details.get("events") if isinstance(details, dict) else None
    expiries = []
    for event in events if isinstance(events, list) else []:
        value = event.get("channel_expiry") if isinstance(event, dict) else None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                expiries.append(datetime.fromisoformat(value).timestamp())
    return min(expiries) if expiries else now + HOUR


def iso(at: float) -> str:
    """``at`` as Zoho wants a date-time: ISO 8601 with a UTC offset, whole seconds."""
    return datetime.fromtimestamp(math.floor(at), UTC).isoformat()


# -- the I/O part ------------------------------------------------------------------------------


class ChannelRenewal:
    """Keeps every configured Zoho channel subscribed; run one per worker process.

    ``store`` is the open job store (its owner opens and closes it); ``http`` the client for
    Zoho (its owner closes it). ``clock`` must be the store's clock too.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
        tokens: TokenSource | None = None,
        tick: float = DEFAULT_TICK,
        concurrency: int = 4,
    ) -> None:
        self.channels: dict[str, Channel] = {c.source: c for c in configured(settings)}
        self.store = store
        self.http = http
        self.clock = clock
        self.timeout = settings.crm.timeout
        self._own_tokens = tokens is None
        self.tokens = tokens or TokenSource.from_settings(settings.crm, http, clock=clock)
        shortest = min((c.interval for c in self.channels.values()), default=tick * 4)
        # At least one tick per period, and then some, so no period goes unscheduled.
        self.tick = min(tick, shortest / 4)
        self.renewals: dict[str, Renewal] = {}  # what this process renewed, by source
        # A refresh, the request, and once more of both after INVALID_TOKEN.
        self.policy = Policy(schedule=Schedule(RETRY_DELAYS), timeout=4 * self.timeout + 5.0)
        self.worker = Worker(
            store,
            QUEUE,
            self._run,
            policy=lambda task: self.policy,
            concurrency=concurrency,
            lease=settings.jobs.lease,
            poll_interval=settings.jobs.poll_interval,
        )
        self._ticker: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        """Schedule this period's renewals and start running them; nothing if no channel."""
        if self._started or not self.channels:
            return
        self._started = True
        await self._schedule_logged()
        self.worker.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())
        log.info("zoho channel renewal started", sources=sorted(self.channels))

    async def stop(self) -> None:
        """Stop ticking and running renewals (a running one is given a few seconds)."""
        if not self._started:
            return
        self._started = False
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await self.worker.stop()
        if self._own_tokens:
            await self.tokens.aclose()

    async def schedule(self) -> int:
        """Put every channel's messages for now and the next period; return how many were new."""
        created = 0
        now = self.clock()
        for channel in self.channels.values():
            for message in schedule_messages(channel, now):
                created += (await self.store.put(message)).created
        return created

    async def renew_now(self, source: str) -> datetime:
        """Renew ``source``'s channel at once; return the expiry Zoho reported."""
        channel = self.channels.get(source)
        if channel is None:
            raise NotFound(f"webhooks.sources.{source}: no Zoho notification channel configured")
        now = self.clock()
        response = await authorized_request(
            self.tokens, "POST", WATCH_PATH, json={"watch": [channel.watch_item(now)]}
        )
        expires = reported_expiry(
            response.status_code, response.content, channel.channel_id, self.clock()
        )
        self.renewals[source] = Renewal(source, now, expires)
        log.info(
            "zoho channel renewed",
            source=source,
            channel_id=channel.channel_id,
            expires=iso(expires),
        )
        return datetime.fromtimestamp(expires, UTC)

    async def _run(self, claim: Claim) -> None:
        source = claim.job.task.removeprefix(TASK_PREFIX)
        channel = self.channels.get(source)
        if channel is None:
            # Another instance's settings scheduled it; a removed channel needs nothing.
            log.warning("no zoho channel configured here; renewal skipped", source=source)
            return
        try:
            await self.renew_now(source)
        except ZohoRateLimited as exc:
            raise Retry(after=exc.retry_after, reason=exc.message) from exc
        except ZohoUnavailable as exc:
            raise Retry(reason=exc.message) from exc
        except (ZohoAuthError, ZohoApiError) as exc:
            raise Fail(exc.message) from exc
        renewal = self.renewals[source]
        now = self.clock()
        # A renewal made right at its period's start is due again exactly at the next one; the
        # tolerance absorbs that and the whole seconds Zoho's date-times are cut to.
        next_start = channel.period_start(channel.period(now) + 1) - EXPIRY_TOLERANCE
        if due([channel], {source: renewal}, next_start):
            after = max(renewal.renew_at - now, MIN_RETRY)
            raise Retry(
                after=after,
                reason=(
                    f"Zoho set channel {channel.channel_id} to expire at {iso(renewal.expires_at)},"
                    f" before the next scheduled renewal: renewing again in {after:.0f} s"
                ),
            )

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            await self._schedule_logged()

    async def _schedule_logged(self) -> None:
        try:
            await self.schedule()
        except StoreUnavailable as exc:
            # The next tick tries again; the channel has its margin to wait for it.
            log.warning("cannot schedule zoho channel renewals", error=str(exc))
