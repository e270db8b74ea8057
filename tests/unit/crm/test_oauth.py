"""Zoho OAuth: the pure refresh core, and the token source against the emulator."""

from __future__ import annotations

import asyncio
import re
import typing
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from patchbay.crm.oauth import (
    DATA_CENTRES,
    AccessToken,
    Credentials,
    RefreshBudget,
    TokenSource,
    ZohoApiError,
    ZohoAuthError,
    ZohoError,
    ZohoRateLimited,
    ZohoUnavailable,
    api_error,
    authorized_request,
    data_center,
    parse_refresh,
    refresh_request,
)
from patchbay.emulators.zoho import ManualClock, ZohoEmulator
from patchbay.errors import ConfigError, PatchbayError
from patchbay.settings import CrmSettings, DataCenter

ACCOUNTS = "http://accounts.zoho.test"


@pytest.fixture
def clock() -> ManualClock:
    """The one clock of the emulator and the source."""
    return ManualClock()


@pytest.fixture
def emulator(clock: ManualClock) -> ZohoEmulator:
    """A fresh emulated Zoho."""
    return ZohoEmulator(clock=clock)


@pytest.fixture
async def http(emulator: ZohoEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose every request reaches the emulator."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as client:
        yield client


def credentials(emulator: ZohoEmulator, **changes: str) -> Credentials:
    """Credentials the emulator accepts, unless changed."""
    values = {
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        "refresh_token": emulator.refresh_token,
        "accounts_url": ACCOUNTS,
        **changes,
    }
    return Credentials(**values)


def source(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock, **kwargs: typing.Any
) -> TokenSource:
    """A token source for the emulator's refresh token."""
    return TokenSource(credentials(emulator), http, clock=clock, **kwargs)


# -- the pure core -----------------------------------------------------------------------------


def test_refresh_request_is_a_form_post_to_the_accounts_server() -> None:
    """The grant goes to {accounts}/oauth/v2/token with the four form fields."""
    request = refresh_request(Credentials("id", "secret", "refresh", accounts_url=ACCOUNTS))
    assert request.url == f"{ACCOUNTS}/oauth/v2/token"
    assert dict(request.form) == {
        "grant_type": "refresh_token",
        "client_id": "id",
        "client_secret": "secret",
        "refresh_token": "refresh",
    }
    assert "secret" not in repr(request)


def test_parse_uses_the_answers_api_domain_and_expiry() -> None:
    """``api_domain`` from the answer is the API base; ``expires_in`` is seconds."""
    body = orjson.dumps(
        {
            "access_token": "t",
            "api_domain": "https://www.zohoapis.eu",
            "token_type": "Bearer",
            "expires_in": 3600,
        }
    )
    token = parse_refresh(200, body, now=100.0, credentials=Credentials("i", "s", "r"))
    assert (token.value, token.api_domain, token.expires_at) == (
        "t",
        "https://www.zohoapis.eu",
        3700,
    )
    assert token.authorization == "Zoho-oauthtoken t"
    assert "'t'" not in repr(token)


@pytest.mark.parametrize(
    ("fields", "lifetime"),
    [
        ({"expires_in": 3600}, 3600.0),
        ({"expires_in": 3600000, "expires_in_sec": 3600}, 3600.0),  # the older answers
        ({"expires_in": 3600000}, 3600.0),  # milliseconds without expires_in_sec
        ({}, 3600.0),  # missing: Zoho's documented hour
        ({"expires_in": "1800"}, 1800.0),
    ],
)
def test_parse_reads_every_expiry_shape(fields: dict[str, typing.Any], lifetime: float) -> None:
    """Seconds, the older milliseconds and a missing value all give a sane lifetime."""
    body = orjson.dumps({"access_token": "t", **fields})
    token = parse_refresh(200, body, now=0.0, credentials=Credentials("i", "s", "r"))
    assert token.expires_at == lifetime
    assert token.api_domain == "https://www.zohoapis.com"  # the data centre's default


def test_parse_override_beats_the_answer() -> None:
    """``api_override`` (zoho.api_url) wins over the answer's api_domain."""
    creds = Credentials("i", "s", "r", api_override="http://emulator")
    body = orjson.dumps({"access_token": "t", "api_domain": "https://www.zohoapis.com"})
    assert parse_refresh(200, body, now=0.0, credentials=creds).api_domain == "http://emulator"


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, {"error": "invalid_code"}, ZohoAuthError),
        (400, {"error": "invalid_client"}, ZohoAuthError),
        (
            400,
            {"error": "Access Denied", "error_description": "You have made too many requests"},
            ZohoRateLimited,
        ),
        (503, {"error": "internal"}, ZohoUnavailable),
        (502, b"<html>bad gateway</html>", ZohoUnavailable),
        (200, {"token_type": "Bearer"}, ZohoUnavailable),
    ],
)
def test_parse_errors(status: int, body: typing.Any, error: type[ZohoError]) -> None:
    """The body decides, even with HTTP 200; each refusal lands in its class."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(error):
        parse_refresh(status, raw, now=0.0, credentials=Credentials("i", "s", "r"))


def test_error_tree() -> None:
    """Every Zoho error is a PatchbayError with a stable code and status."""
    assert issubclass(ZohoAuthError, ZohoError) and issubclass(ZohoError, PatchbayError)
    assert (ZohoAuthError.code, ZohoAuthError.status) == ("zoho_auth", 502)
    assert issubclass(ZohoRateLimited, ZohoUnavailable)
    assert ZohoRateLimited("x", retry_after=5).to_json()["error"]["detail"] == {"retry_after": 5}


def test_api_error_classifies() -> None:
    """429 and 5xx are transient; other codes come with Zoho's code."""
    assert isinstance(api_error(429, b"{}"), ZohoRateLimited)
    assert isinstance(api_error(500, b""), ZohoUnavailable)
    error = api_error(401, b'{"code":"INVALID_TOKEN","message":"invalid oauth token"}')
    assert isinstance(error, ZohoApiError) and error.zoho_code == "INVALID_TOKEN"
    nested = api_error(400, b'{"watch":[{"code":"INVALID_DATA","message":"invalid data"}]}')
    assert isinstance(nested, ZohoApiError) and nested.zoho_code == "INVALID_DATA"


def test_data_centers() -> None:
    """Every data centre the settings accept is in the table; Canada uses zohocloud.ca."""
    assert set(typing.get_args(DataCenter)) == set(DATA_CENTRES)
    assert data_center("ca").accounts_url == "https://accounts.zohocloud.ca"
    assert data_center("com") == data_center("us")
    assert data_center("EU").api_domain == "https://www.zohoapis.eu"
    with pytest.raises(ConfigError, match=re.escape("crm.data_center")):
        data_center("mars")


def test_credentials_from_settings() -> None:
    """The data centre's hosts, unless accounts_url or api_url override them; no secret shown."""
    creds = Credentials.from_settings(
        CrmSettings(
            client_id="i", client_secret="s3cret", refresh_token="r3fresh", data_center="au"
        )
    )
    assert creds.accounts_url == "https://accounts.zoho.com.au"
    assert creds.api_domain == "https://www.zohoapis.com.au"
    assert "s3cret" not in repr(creds) and "r3fresh" not in repr(creds)
    local = Credentials.from_settings(
        CrmSettings(accounts_url="http://a.test/", api_url="http://b.test/")
    )
    assert (local.accounts_url, local.api_override) == ("http://a.test", "http://b.test")


def test_budget_window() -> None:
    """At most ``limit`` refreshes in any window; a block holds until its end."""
    budget = RefreshBudget(limit=2, window=600)
    budget.spend(0)
    budget.spend(100)
    assert budget.wait(200) == 400
    assert budget.wait(600) == 0
    budget.block(1000)
    assert budget.wait(700) == 300


def test_token_usable_until_shortly_before_expiry() -> None:
    """Five minutes early, or half the life of a short token."""
    hour = AccessToken("t", "d", obtained_at=0, expires_at=3600)
    assert hour.usable(3299) and not hour.usable(3300)
    minute = AccessToken("t", "d", obtained_at=0, expires_at=60)
    assert minute.usable(29) and not minute.usable(30)


# -- against the emulator ----------------------------------------------------------------------


async def test_refresh(emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock) -> None:
    """A refresh yields a token the emulator's API accepts, for the API domain it named."""
    token = await source(emulator, http, clock).token()
    assert token.api_domain == emulator.api_domain
    assert token.expires_at == clock() + 3600
    assert emulator.accounts.valid(token.value, clock())


async def test_token_is_cached(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A second call within the token's life sends nothing."""
    tokens = source(emulator, http, clock)
    first = await tokens.token()
    clock.advance(3000)
    assert await tokens.token() is first
    assert emulator.accounts.refreshes == 1 == tokens.refreshes


async def test_single_flight(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Twenty concurrent callers share one refresh."""
    tokens = source(emulator, http, clock)
    got = await asyncio.gather(*(tokens.token() for _ in range(20)))
    assert len({t.value for t in got}) == 1
    assert emulator.accounts.refreshes == 1 == tokens.refreshes


async def test_single_flight_shares_a_failure(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Concurrent callers of a refused refresh all get its error, from one request."""
    tokens = TokenSource(credentials(emulator, refresh_token="nope"), http, clock=clock)
    results = await asyncio.gather(*(tokens.token() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ZohoAuthError) for r in results)
    assert tokens.refreshes == 1


async def test_expiry_refreshes(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Five minutes before expiry the next call refreshes."""
    tokens = source(emulator, http, clock)
    first = await tokens.token()
    clock.advance(3600 - 300)
    second = await tokens.token()
    assert second.value != first.value
    assert emulator.accounts.refreshes == 2


async def test_budget_guard(clock: ManualClock) -> None:
    """The eleventh refresh in ten minutes is refused locally, never sent; later it works."""
    emulator = ZohoEmulator(clock=clock, token_lifetime=60)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as http:
        tokens = source(emulator, http, clock)
        for _ in range(10):
            await tokens.token()
            clock.advance(31)  # past half of the 60 s life: stale
        with pytest.raises(ZohoRateLimited, match="refusing a Zoho token refresh") as caught:
            await tokens.token()
        assert caught.value.retry_after == pytest.approx(600 - 310)
        assert emulator.accounts.refreshes == 10
        assert emulator.count("POST", "/oauth/v2/token") == 10  # Zoho never saw the eleventh
        clock.advance(600 - 310)
        await tokens.token()
        assert emulator.accounts.refreshes == 11


async def test_access_denied_blocks_the_budget(clock: ManualClock) -> None:
    """When Zoho says Access Denied (it counted more than we did) nothing is sent for a window."""
    emulator = ZohoEmulator(clock=clock, token_lifetime=60)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as http:
        tokens = source(emulator, http, clock, budget=RefreshBudget(limit=100))
        for _ in range(10):
            await tokens.token()
            clock.advance(31)
        with pytest.raises(ZohoRateLimited, match="too many refreshes"):
            await tokens.token()
        with pytest.raises(ZohoRateLimited, match="refusing"):
            await tokens.token()
        assert emulator.count("POST", "/oauth/v2/token") == 11


async def test_invalid_code_with_http_200(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Zoho's ``{"error": "invalid_code"}`` with HTTP 200 is a ZohoAuthError naming the fix."""
    tokens = TokenSource(credentials(emulator, refresh_token="revoked"), http, clock=clock)
    with pytest.raises(ZohoAuthError, match="invalid_code") as caught:
        await tokens.token()
    assert "crm.refresh_token" in caught.value.message
    assert emulator.calls[-1].status == 200


async def test_wrong_client_is_an_auth_error(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """An unknown client or a wrong secret is refused as such."""
    for change, reason in (("client_id", "invalid_client"), ("client_secret", "invalid_client_")):
        tokens = TokenSource(credentials(emulator, **{change: "x"}), http, clock=clock)
        with pytest.raises(ZohoAuthError, match=reason):
            await tokens.token()


async def test_network_error_is_unavailable(clock: ManualClock) -> None:
    """A connection failure is transient: ZohoUnavailable."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        tokens = TokenSource(Credentials("i", "s", "r", accounts_url=ACCOUNTS), http, clock=clock)
        with pytest.raises(ZohoUnavailable, match="cannot reach Zoho accounts"):
            await tokens.token()


async def test_invalid_token_is_refreshed_once(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """An API 401 INVALID_TOKEN drops the token and the request is sent again with a new one."""
    tokens = source(emulator, http, clock)
    first = await tokens.token()
    emulator.accounts.expire(first.value)
    response = await authorized_request(tokens, "GET", "/crm/v8/actions/watch")
    assert response.status_code == 204
    assert tokens.refreshes == 2
    assert [c.status for c in emulator.calls if c.path.endswith("watch")] == [401, 204]


async def test_aclose_cancels_a_refresh_in_flight(clock: ManualClock) -> None:
    """Closing the source while a refresh hangs leaves no task behind."""
    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as http:
        tokens = TokenSource(Credentials("i", "s", "r", accounts_url=ACCOUNTS), http, clock=clock)
        caller = asyncio.create_task(tokens.token())
        await started.wait()
        await tokens.aclose()
        with pytest.raises(asyncio.CancelledError):
            await caller
