"""The token source's shared mode: one refresh and one budget for every process, via the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from patchbay.crm.oauth import (
    BLOCKED_KEY,
    TOKEN_KEY,
    AccessToken,
    Credentials,
    TokenSource,
    ZohoRateLimited,
    seal,
    unseal,
)
from patchbay.emulators.zoho import ManualClock, ZohoEmulator
from patchbay.jobs.sqlite import SqliteStore
from tests.unit.crm.conftest import FakeSleep

ACCOUNTS = "http://accounts.zoho.test"


@pytest.fixture
def emulator(clock: ManualClock) -> ZohoEmulator:
    """An emulated Zoho with one-minute tokens."""
    return ZohoEmulator(clock=clock, token_lifetime=60)


@pytest.fixture
async def http(emulator: ZohoEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client reaching the emulator."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as client:
        yield client


def credentials(emulator: ZohoEmulator) -> Credentials:
    """Credentials the emulator accepts."""
    return Credentials(
        emulator.client_id, emulator.client_secret, emulator.refresh_token, accounts_url=ACCOUNTS
    )


def shared(
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    store: SqliteStore,
    sleep: FakeSleep,
) -> TokenSource:
    """A source as one worker process would have it: its own, sharing the store."""
    return TokenSource(credentials(emulator), http, clock=clock, store=store, sleep=sleep)


async def test_two_sources_refresh_once(
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    store: SqliteStore,
    sleep: FakeSleep,
) -> None:
    """Two processes asking at once: one refresh, the same token for both."""
    a = shared(emulator, http, clock, store, sleep)
    b = shared(emulator, http, clock, store, sleep)
    got = await asyncio.gather(*(s.token() for s in (a, b, a, b)))
    assert len({t.value for t in got}) == 1
    assert emulator.accounts.refreshes == 1 == a.refreshes + b.refreshes


async def test_the_token_survives_a_restart(
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    store: SqliteStore,
    sleep: FakeSleep,
) -> None:
    """A new process finds the stored token and refreshes nothing until it goes stale."""
    first = await shared(emulator, http, clock, store, sleep).token()
    clock.advance(20)
    again = await shared(emulator, http, clock, store, sleep).token()
    assert again.value == first.value and emulator.accounts.refreshes == 1
    clock.advance(15)  # 35 s of 60: past half its life
    fresh = await shared(emulator, http, clock, store, sleep).token()
    assert fresh.value != first.value and emulator.accounts.refreshes == 2


async def test_the_budget_is_shared(
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    store: SqliteStore,
    sleep: FakeSleep,
) -> None:
    """Ten refreshes in ten minutes across processes; the eleventh is refused by either."""
    sources = [shared(emulator, http, clock, store, sleep) for _ in range(3)]
    for i in range(10):
        token = await sources[i % 3].token()
        for source in sources:  # as after a 401 in each: the next call refreshes
            source.invalidate(token)
        clock.advance(1)
    assert emulator.accounts.refreshes == 10
    with pytest.raises(ZohoRateLimited, match="all processes") as caught:
        await sources[1].token()
    assert caught.value.retry_after == pytest.approx(600 - 10)
    assert emulator.count("POST", "/oauth/v2/token") == 10


async def test_access_denied_blocks_every_process(
    clock: ManualClock, store: SqliteStore, sleep: FakeSleep
) -> None:
    """Zoho's Access Denied (it counted more than we did) stops every process for a window."""
    emulator = ZohoEmulator(clock=clock, refresh_limit=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as http:
        a = shared(emulator, http, clock, store, sleep)
        b = shared(emulator, http, clock, store, sleep)
        for source in (a, b):
            token = await source.token()
            a.invalidate(token)
            b.invalidate(token)
        with pytest.raises(ZohoRateLimited, match="too many refreshes"):
            await a.token()
        with pytest.raises(ZohoRateLimited, match="Access Denied"):
            await b.token()
        assert emulator.count("POST", "/oauth/v2/token") == 3
        assert await store.get_value(BLOCKED_KEY) is not None


async def test_a_rejected_token_is_not_taken_from_the_store(
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    store: SqliteStore,
    sleep: FakeSleep,
) -> None:
    """After a 401 the stored copy of the refused token is skipped and a new one fetched."""
    source = shared(emulator, http, clock, store, sleep)
    first = await source.token()
    source.invalidate(first)
    second = await source.token()
    assert second.value != first.value
    other = await shared(emulator, http, clock, store, sleep).token()
    assert other.value == second.value and emulator.accounts.refreshes == 2


async def test_a_dead_holder_delays_only_until_its_lease_ends(
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    store: SqliteStore,
    sleep: FakeSleep,
) -> None:
    """A lock left by a crashed process is waited out (its ttl), then the refresh happens."""
    assert await store.acquire(TOKEN_KEY, "crashed", 40)
    start = clock()
    token = await shared(emulator, http, clock, store, sleep).token()
    assert emulator.accounts.valid(token.value, clock())
    assert 40 <= clock() - start < 41


def test_sealed_tokens_open_only_with_the_same_credentials() -> None:
    """The stored token is encrypted; other credentials (or a broken value) read as missing."""
    creds = Credentials("id", "secret", "refresh", api_override="http://local")
    token = AccessToken("t0ken-value", "https://www.zohoapis.eu", 1.0, 61.0)
    sealed = seal(token, creds)
    assert b"t0ken-value" not in sealed
    opened = unseal(sealed, creds)
    assert opened is not None and opened.value == "t0ken-value"
    assert opened.api_domain == "http://local"  # this process's override still wins
    assert unseal(sealed, Credentials("id", "secret", "another refresh token")) is None
    assert unseal(b"short", creds) is None
