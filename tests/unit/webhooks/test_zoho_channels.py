"""Zoho channel renewal: the pure schedule, and renewals through the job store and the emulator."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from patchbay.emulators.zoho import ManualClock, ZohoEmulator
from patchbay.errors import NotFound
from patchbay.jobs.model import Selection, Status
from patchbay.jobs.sqlite import SqliteStore
from patchbay.jobs.store import Store
from patchbay.settings import Settings, load
from patchbay.webhooks.zoho_channels import (
    CLOCK_SKEW,
    QUEUE,
    STREAM,
    WEEK,
    Channel,
    ChannelRenewal,
    Renewal,
    configured,
    due,
    margin,
    reported_expiry,
    schedule_messages,
)

DAY = 86400.0
Opener = Callable[[], Awaitable[SqliteStore]]
CHANNEL_ID = 1000000068001


def channel(lifetime: float = DAY, source: str = "crm") -> Channel:
    """A configured channel."""
    return Channel(
        source=source,
        channel_id=str(CHANNEL_ID),
        events=("Leads.all",),
        notify_url="https://gw.example/hooks/crm",
        token="s3cret",
        lifetime=lifetime,
    )


# -- the pure schedule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [(DAY, 8640.0), (WEEK, 60480.0), (3600.0, 360.0), (1800.0, 300.0), (400.0, 200.0)],
)
def test_margin(lifetime: float, expected: float) -> None:
    """10 % of the lifetime, at least five minutes, at most half of it."""
    assert margin(lifetime) == expected


def test_due_from_the_last_renewal_and_reported_expiry() -> None:
    """Never renewed is due; then due once less than the margin is left of Zoho's expiry."""
    day = channel()
    assert due([day], {}, 0.0) == [day]
    renewed = {"crm": Renewal("crm", renewed_at=0.0, expires_at=DAY)}
    assert due([day], renewed, DAY - 8640 - 1) == []
    assert due([day], renewed, DAY - 8640) == [day]
    # Zoho reported one hour instead of a day: the hour's own margin counts.
    short = {"crm": Renewal("crm", renewed_at=0.0, expires_at=3600.0)}
    assert due([day], short, 3600 - 361) == []
    assert due([day], short, 3600 - 360) == [day]


def test_schedule_messages_name_the_period() -> None:
    """Now's period is due at once and the next at its start, under one stream and key each."""
    day = channel()
    interval = DAY - 8640
    now = 1_800_000_000.0
    index = math.floor(now / interval)
    current, following = schedule_messages(day, now)
    assert (current.stream, current.key) == (STREAM, f"crm:{index}")
    assert following.key == f"crm:{index + 1}"
    assert current.jobs[0].delay == 0.0
    assert following.jobs[0].delay == pytest.approx((index + 1) * interval - now)
    assert following.jobs[0].queue == QUEUE and following.jobs[0].task == "renew:crm"
    # Any process at any moment of the period computes the same keys.
    later = schedule_messages(day, (index + 1) * interval - 1)
    assert [m.key for m in later] == [current.key, following.key]


def test_schedule_never_lets_a_channel_lapse() -> None:
    """A renewal at a period's start lasts past the next period's start by the whole margin."""
    for lifetime in (600.0, 3600.0, DAY, WEEK):
        c = channel(lifetime)
        start = c.period_start(c.period(1_800_000_000.0))
        expires = start + c.requested_lifetime
        assert expires - c.period_start(c.period(start) + 1) == margin(c.requested_lifetime)


def test_watch_item_stays_inside_zohos_week() -> None:
    """The request asks for now + lifetime, at most a week less the clock-skew allowance."""
    now = 1_800_000_000.0
    assert datetime.fromisoformat(channel().watch_item(now)["channel_expiry"]).timestamp() == (
        now + DAY
    )
    week = channel(WEEK).watch_item(now)
    assert week["channel_id"] == CHANNEL_ID
    assert week["channel_expiry"].endswith("+00:00")
    assert datetime.fromisoformat(week["channel_expiry"]).timestamp() == now + WEEK - CLOCK_SKEW


def test_reported_expiry_reads_the_earliest_module() -> None:
    """The earliest per-module expiry counts; a refused item is an error."""
    body = (
        b'{"watch":[{"code":"SUCCESS","status":"success","details":{"events":['
        b'{"channel_expiry":"2027-01-15T08:00:00+00:00"},'
        b'{"channel_expiry":"2027-01-15T07:00:00+00:00"}]}}]}'
    )
    expected = datetime.fromisoformat("2027-01-15T07:00:00+00:00").timestamp()
    assert reported_expiry(200, body, "1", 0.0) == expected
    refused = b'{"watch":[{"code":"INVALID_DATA","status":"error","message":"x","details":{}}]}'
    with pytest.raises(Exception, match="INVALID_DATA"):
        reported_expiry(400, refused, "1", 0.0)


# -- against the emulator and a job store ------------------------------------------------------


def settings_for(
    tmp_path: Path, emulator: ZohoEmulator, *, lifetime: float = DAY, refresh_token: str = ""
) -> Settings:
    """Settings with one zoho source whose channel is renewed through the emulator."""
    config = tmp_path / "patchbay.toml"
    config.write_text(
        f"""
[jobs]
poll_interval = 0.005
[crm]
client_id = "{emulator.client_id}"
client_secret = "{emulator.client_secret}"
refresh_token = "{refresh_token or emulator.refresh_token}"
accounts_url = "http://accounts.zoho.test"
[webhooks.sources.crm]
provider = "zoho"
secrets = ["s3cret"]
channel_id = "{CHANNEL_ID}"
events = ["Leads.all", "Deals.edit"]
notify_url = "https://gw.example/hooks/crm?x=1"
channel_lifetime = {lifetime}
[webhooks.sources.github]
provider = "github"
secrets = ["x"]
"""
    )
    return load(config, env={})


@pytest.fixture
def clock() -> ManualClock:
    """One clock for the emulator, the store and the renewal."""
    return ManualClock()


@pytest.fixture
def emulator(clock: ManualClock) -> ZohoEmulator:
    """A fresh emulated Zoho."""
    return ZohoEmulator(clock=clock)


@pytest.fixture
async def http(emulator: ZohoEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose every request reaches the emulator."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as client:
        yield client


@pytest.fixture
async def open_store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Opener]:
    """Opens SQLite stores on one file (as separate processes would); all closed afterwards."""
    opened: list[SqliteStore] = []

    async def opener() -> SqliteStore:
        store = SqliteStore(tmp_path / "jobs.db", clock=clock)
        await store.open()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


async def settle(store: Store, clock: ManualClock) -> None:
    """Wait until no renewal job is running or due."""
    for _ in range(2000):
        active = await store.jobs(Selection(queue=QUEUE, statuses=(Status.PENDING, Status.RUNNING)))
        if not any(j.status is Status.RUNNING or j.run_at <= clock() for j in active):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("renewal jobs did not settle")


def test_configured_takes_zoho_sources_with_a_channel(tmp_path: Path) -> None:
    """Only zoho sources with channel_id are renewed; their token is the first secret."""
    settings = settings_for(tmp_path, ZohoEmulator())
    (c,) = configured(settings)
    assert (c.source, c.channel_id, c.token, c.lifetime) == ("crm", str(CHANNEL_ID), "s3cret", DAY)


async def test_renew_now(
    tmp_path: Path,
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    open_store: Opener,
) -> None:
    """renew_now subscribes the channel as configured and returns Zoho's expiry."""
    store = await open_store()
    renewal = ChannelRenewal(settings_for(tmp_path, emulator), store, http=http, clock=clock)
    expires = await renewal.renew_now("crm")
    assert expires.timestamp() == clock() + DAY
    live = emulator.channel(CHANNEL_ID)
    assert live is not None
    assert (live.events, live.token, live.notify_url) == (
        ("Leads.all", "Deals.edit"),
        "s3cret",
        "https://gw.example/hooks/crm?x=1",
    )
    with pytest.raises(NotFound):
        await renewal.renew_now("github")


async def test_start_renews_once_and_stops_cleanly(
    tmp_path: Path,
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    open_store: Opener,
) -> None:
    """Starting renews the channel at once (a first deployment); stop leaves nothing running."""
    store = await open_store()
    renewal = ChannelRenewal(settings_for(tmp_path, emulator), store, http=http, clock=clock)
    await renewal.start()
    await settle(store, clock)
    await renewal.stop()
    await renewal.stop()  # twice is harmless
    assert emulator.channel(CHANNEL_ID) is not None
    assert emulator.count("POST", "/crm/v8/actions/watch") == 1
    counts = await store.counts(QUEUE)
    assert (counts[Status.SUCCEEDED], counts[Status.PENDING]) == (1, 1)  # the next period waits


async def test_two_instances_renew_once_per_period(
    tmp_path: Path,
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    open_store: Opener,
) -> None:
    """Two processes sharing one SQLite store renew once per period, not twice."""
    settings = settings_for(tmp_path, emulator)
    stores = [await open_store(), await open_store()]
    renewals = [ChannelRenewal(settings, s, http=http, clock=clock) for s in stores]
    periods = set()
    for r in renewals:
        await r.start()
    try:
        for _ in range(72):  # three days, hour by hour
            for r in renewals:
                await r.schedule()
            periods.add(renewals[0].channels["crm"].period(clock()))
            for s in stores:
                await settle(s, clock)
            clock.advance(3600)
    finally:
        for r in renewals:
            await r.stop()
    assert emulator.count("POST", "/crm/v8/actions/watch") == len(periods) == 4
    done = await stores[0].jobs(Selection(queue=QUEUE, statuses=(Status.SUCCEEDED,)))
    assert len(done) == len(periods)


async def test_never_expired_over_a_week(
    tmp_path: Path,
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    open_store: Opener,
) -> None:
    """With a one-day lifetime and the clock moving hour by hour for a week, it never lapses."""
    store = await open_store()
    renewal = ChannelRenewal(settings_for(tmp_path, emulator), store, http=http, clock=clock)
    await renewal.start()
    try:
        for hour in range(7 * 24 + 1):
            await renewal.schedule()
            await settle(store, clock)
            live = emulator.channel(CHANNEL_ID)
            assert live is not None, f"expired at hour {hour}"
            assert live.expires_at - clock() >= margin(DAY) - 3600
            clock.advance(3600)
    finally:
        await renewal.stop()
    renewals = emulator.count("POST", "/crm/v8/actions/watch")
    assert 7 * DAY / (DAY - margin(DAY)) <= renewals <= 7 * DAY / (DAY - margin(DAY)) + 2


async def test_refused_credentials_go_to_the_dead_letters(
    tmp_path: Path,
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    open_store: Opener,
) -> None:
    """invalid_code cannot be fixed by retrying: the job is dead at once, with the reason."""
    store = await open_store()
    settings = settings_for(tmp_path, emulator, refresh_token="revoked")
    renewal = ChannelRenewal(settings, store, http=http, clock=clock)
    await renewal.start()
    await settle(store, clock)
    await renewal.stop()
    (dead,) = await store.jobs(Selection(queue=QUEUE, statuses=(Status.DEAD,)))
    assert dead.last_error is not None and "invalid_code" in dead.last_error


async def test_zoho_outage_is_retried(
    tmp_path: Path,
    emulator: ZohoEmulator,
    clock: ManualClock,
    open_store: Opener,
) -> None:
    """A 503 from the API is retried soon, and the retry renews once Zoho is back."""
    down = True
    inner = httpx.ASGITransport(app=emulator)

    async def flaky(request: httpx.Request) -> httpx.Response:
        if down and request.url.path.endswith("/watch"):
            return httpx.Response(503, json={"code": "INTERNAL_ERROR"})
        return await inner.handle_async_request(request)

    store = await open_store()
    async with httpx.AsyncClient(transport=httpx.MockTransport(flaky)) as http:
        renewal = ChannelRenewal(settings_for(tmp_path, emulator), store, http=http, clock=clock)
        await renewal.start()
        try:
            await settle(store, clock)
            retried = [
                j
                for j in await store.jobs(Selection(queue=QUEUE))
                if j.attempts == 1 and j.status is Status.PENDING
            ]
            assert retried and retried[0].last_error is not None
            assert "HTTP 503" in retried[0].last_error
            assert retried[0].run_at - clock() <= 10
            down = False
            clock.advance(10)
            await settle(store, clock)
        finally:
            await renewal.stop()
    assert emulator.channel(CHANNEL_ID) is not None


async def test_a_short_expiry_from_zoho_is_renewed_in_time(
    tmp_path: Path, clock: ManualClock, open_store: Opener
) -> None:
    """Zoho's clock behind ours turns a week into an hour: the job runs again before it lapses."""
    behind = ZohoEmulator(clock=lambda: clock() - 700)
    store = await open_store()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=behind)) as http:
        settings = settings_for(tmp_path, behind, lifetime=WEEK)
        renewal = ChannelRenewal(settings, store, http=http, clock=clock)
        await renewal.start()
        try:
            await settle(store, clock)
            first = behind.channels[CHANNEL_ID]
            assert first.expires_at == clock() - 700 + 3600  # Zoho's "more than a week" rule
            (again,) = [
                j for j in await store.jobs(Selection(queue=QUEUE)) if j.run_at < clock() + 3600
            ]
            assert again.status is Status.PENDING and again.attempts == 1
            assert again.last_error is not None and "before the next scheduled" in again.last_error
            clock.advance(again.run_at - clock())
            await settle(store, clock)
            assert behind.channels[CHANNEL_ID].expires_at > first.expires_at
        finally:
            await renewal.stop()
