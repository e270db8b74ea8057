"""The Zoho emulator: the accounts server's rules and the notification API's validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from patchbay.emulators.zoho import WEEK, ManualClock, ZohoEmulator, iso

WATCH = "/crm/v8/actions/watch"


@pytest.fixture
def clock() -> ManualClock:
    """The emulator's clock."""
    return ManualClock()


@pytest.fixture
def emulator(clock: ManualClock) -> ZohoEmulator:
    """A fresh emulated Zoho."""
    return ZohoEmulator(clock=clock)


@pytest.fixture
async def http(emulator: ZohoEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the emulator (either host reaches it)."""
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://zoho.test") as client:
        yield client


def grant(emulator: ZohoEmulator, **changes: str) -> dict[str, str]:
    """A refresh-token grant the emulator accepts, unless changed."""
    return {
        "grant_type": "refresh_token",
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        "refresh_token": emulator.refresh_token,
        **changes,
    }


async def access_token(emulator: ZohoEmulator, http: httpx.AsyncClient) -> str:
    """A fresh access token."""
    response = await http.post("/oauth/v2/token", data=grant(emulator))
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


async def watch(
    http: httpx.AsyncClient, token: str, method: str, body: Any = None, **params: str
) -> httpx.Response:
    """A request to the watch API with ``token``."""
    return await http.request(
        method,
        WATCH,
        content=None if body is None else orjson.dumps(body),
        params=params,
        headers={"authorization": f"Zoho-oauthtoken {token}"},
    )


def item(channel_id: int = 1000000068001, **fields: Any) -> dict[str, Any]:
    """A valid watch item, with changes."""
    return {
        "channel_id": channel_id,
        "events": ["Leads.all", "Deals.edit"],
        "notify_url": "https://gw.example/hooks/zoho?tenant=7",
        "token": "s3cret",
        **fields,
    }


# -- accounts ----------------------------------------------------------------------------------


async def test_refresh_in_query_or_form(emulator: ZohoEmulator, http: httpx.AsyncClient) -> None:
    """Parameters are accepted in the query (the docs) and in a form body (the SDK)."""
    for response in (
        await http.post("/oauth/v2/token", params=grant(emulator)),
        await http.post("/oauth/v2/token", data=grant(emulator)),
    ):
        body = response.json()
        assert response.status_code == 200
        assert set(body) == {"access_token", "api_domain", "token_type", "expires_in"}
        assert (body["api_domain"], body["token_type"], body["expires_in"]) == (
            emulator.api_domain,
            "Bearer",
            3600,
        )


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"client_id": "other"}, "invalid_client"),
        ({"client_secret": "other"}, "invalid_client_secret"),
        ({"refresh_token": "other"}, "invalid_code"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
    ],
)
async def test_refusals_come_with_http_200(
    emulator: ZohoEmulator, http: httpx.AsyncClient, changes: dict[str, str], error: str
) -> None:
    """Like Zoho, a refused grant is ``{"error": ...}`` with HTTP 200."""
    response = await http.post("/oauth/v2/token", data=grant(emulator, **changes))
    assert (response.status_code, response.json()) == (200, {"error": error})


async def test_ten_refreshes_per_ten_minutes(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """The eleventh refresh within ten minutes gets Access Denied; the window then slides."""
    for _ in range(10):
        assert "access_token" in (await http.post("/oauth/v2/token", data=grant(emulator))).json()
        clock.advance(30)
    denied = await http.post("/oauth/v2/token", data=grant(emulator))
    assert denied.json()["error"] == "Access Denied"
    assert "too many requests" in denied.json()["error_description"]
    clock.advance(600 - 300)
    assert "access_token" in (await http.post("/oauth/v2/token", data=grant(emulator))).json()


async def test_only_the_last_ten_access_tokens_are_valid(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Issuing an eleventh access token invalidates the oldest."""
    tokens = []
    for _ in range(11):
        tokens.append(await access_token(emulator, http))
        clock.advance(61)  # stay within the refresh limit
    assert (await watch(http, tokens[0], "GET")).json()["code"] == "INVALID_TOKEN"
    assert (await watch(http, tokens[1], "GET")).status_code == 204


async def test_expired_and_missing_tokens(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """An expired token is 401 INVALID_TOKEN; no Zoho-oauthtoken header is 401 too."""
    token = await access_token(emulator, http)
    clock.advance(3600)
    response = await watch(http, token, "GET")
    assert (response.status_code, response.json()["code"]) == (401, "INVALID_TOKEN")
    bearer = await http.get(WATCH, headers={"authorization": f"Bearer {token}"})
    assert (bearer.status_code, bearer.json()["code"]) == (401, "AUTHENTICATION_FAILURE")


async def test_authorization_code_and_revoke(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A code grants a refresh token once; a revoked refresh token is invalid_code."""
    code = emulator.accounts.new_code(clock())
    fields = grant(emulator, grant_type="authorization_code", code=code)
    body = (await http.post("/oauth/v2/token", data=fields)).json()
    assert {"access_token", "refresh_token"} <= set(body)
    assert (await http.post("/oauth/v2/token", data=fields)).json() == {"error": "invalid_code"}
    revoked = await http.post("/oauth/v2/token/revoke", params={"token": body["refresh_token"]})
    assert revoked.json() == {"status": "success"}
    again = grant(emulator, refresh_token=body["refresh_token"])
    assert (await http.post("/oauth/v2/token", data=again)).json() == {"error": "invalid_code"}
    assert (await watch(http, body["access_token"], "GET")).status_code == 401


# -- notifications -----------------------------------------------------------------------------


async def test_enable_answers_like_zoho(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A subscription answers per item with details.events, one per module."""
    token = await access_token(emulator, http)
    expiry = iso(clock() + 86400)
    response = await watch(http, token, "POST", {"watch": [item(channel_expiry=expiry)]})
    assert response.status_code == 200
    (result,) = response.json()["watch"]
    assert (result["code"], result["status"]) == ("SUCCESS", "success")
    events = result["details"]["events"]
    assert [e["resource_name"] for e in events] == ["Leads", "Deals"]
    assert set(events[0]) == {
        "channel_expiry",
        "resource_uri",
        "resource_id",
        "resource_name",
        "channel_id",
    }
    assert events[0]["channel_expiry"] == expiry
    assert events[0]["resource_uri"] == f"{emulator.api_domain}/crm/v8/Leads"
    channel = emulator.channel(1000000068001)
    assert channel is not None and channel.expires_at == clock() + 86400


@pytest.mark.parametrize(
    ("offset", "granted"),
    [
        (None, 3600.0),  # missing: one hour
        (WEEK, WEEK),  # a week is the most
        (WEEK + 60, 3600.0),  # beyond a week: quietly one hour, as documented
    ],
)
async def test_expiry_rules(
    emulator: ZohoEmulator,
    http: httpx.AsyncClient,
    clock: ManualClock,
    offset: float | None,
    granted: float,
) -> None:
    """No expiry means an hour, and so does one more than a week ahead."""
    token = await access_token(emulator, http)
    fields: dict[str, Any] = {} if offset is None else {"channel_expiry": iso(clock() + offset)}
    assert (await watch(http, token, "POST", {"watch": [item(**fields)]})).status_code == 200
    assert emulator.channels[1000000068001].expires_at == clock() + granted


async def test_validation_per_item(emulator: ZohoEmulator, http: httpx.AsyncClient) -> None:
    """Bad items are refused one by one: 207 for a mix, 400 when none succeeded."""
    token = await access_token(emulator, http)
    bad = [
        item(1, token="x" * 51),
        item(2, events=["Leads.sing"]),
        item(3, notify_url=None),
        item(4, channel_expiry="2020-01-01T00:00:00+00:00"),
        item(5, channel_expiry="2030-01-01T00:00:00"),  # no offset
        {"events": ["Leads.all"], "notify_url": "https://x"},
        item(6, events=[f"M{i}.all" for i in range(51)]),
    ]
    response = await watch(http, token, "POST", {"watch": [*bad, item(7, token="y" * 50)]})
    assert response.status_code == 207
    results = response.json()["watch"]
    codes = [(r["code"], r["details"].get("api_name")) for r in results]
    assert codes == [
        ("INVALID_DATA", "token"),
        ("INVALID_DATA", "events"),
        ("MANDATORY_NOT_FOUND", "notify_url"),
        ("INVALID_DATA", "channel_expiry"),
        ("INVALID_DATA", "channel_expiry"),
        ("MANDATORY_NOT_FOUND", "channel_id"),
        ("LIMIT_EXCEEDED", "events"),
        ("SUCCESS", None),
    ]
    assert set(emulator.channels) == {7}
    only_bad = await watch(http, token, "POST", {"watch": bad[:1]})
    assert only_bad.status_code == 400


async def test_at_most_fifty_channels_per_request(
    emulator: ZohoEmulator, http: httpx.AsyncClient
) -> None:
    """Fifty-one channels in one request are refused as a whole."""
    token = await access_token(emulator, http)
    response = await watch(http, token, "POST", {"watch": [item(i) for i in range(1, 52)]})
    assert (response.status_code, response.json()["code"]) == (400, "LIMIT_EXCEEDED")
    assert (await watch(http, token, "POST", {"watch": [item(i) for i in range(1, 51)]})).is_success
    empty = await watch(http, token, "POST", {"watch": []})
    assert (empty.status_code, empty.json()["code"]) == (400, "MANDATORY_NOT_FOUND")


async def test_list_update_delete(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """GET lists live channels per module; PATCH drops events; DELETE unsubscribes."""
    token = await access_token(emulator, http)
    await watch(http, token, "POST", {"watch": [item(1), item(2, events=["Contacts.create"])]})
    listed = (await watch(http, token, "GET", module="Leads")).json()["watch"]
    assert [(e["channel_id"], e["events"]) for e in listed] == [(1, ["Leads.all"])]
    assert listed[0]["token"] == "s3cret"
    patch = {"watch": [{"channel_id": 1, "events": ["Deals.edit"], "_delete_events": True}]}
    assert (await watch(http, token, "PATCH", patch)).status_code == 200
    assert emulator.channels[1].events == ("Leads.all",)
    unknown = await watch(http, token, "PUT", {"watch": [item(99)]})
    assert unknown.status_code == 400
    deleted = await watch(http, token, "DELETE", channel_ids="1,99")
    assert deleted.status_code == 207
    assert [r["status"] for r in deleted.json()["watch"]] == ["success", "error"]
    missing = await watch(http, token, "DELETE")
    assert missing.json()["code"] == "REQUIRED_PARAM_MISSING"
    assert (await watch(http, token, "GET", channel_id="1")).status_code == 204


async def test_expired_channel_is_gone_but_inspectable(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """After its expiry a channel is neither listed nor notified, yet tests still see it."""
    token = await access_token(emulator, http)
    await watch(http, token, "POST", {"watch": [item(1)]})
    clock.advance(3600)
    assert emulator.channel(1) is None
    assert emulator.channels[1].expires_at == clock()
    token = await access_token(emulator, http)
    assert (await watch(http, token, "GET")).status_code == 204
    with pytest.raises(LookupError):
        emulator.notification(1, ids=["5"])


async def test_renewal_extends_and_adds_events(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Enabling a live channel again renews it and adds its events."""
    token = await access_token(emulator, http)
    await watch(http, token, "POST", {"watch": [item(1)]})
    clock.advance(1800)
    later = iso(clock() + 7200)
    renewal = item(1, events=["Tasks.delete"], channel_expiry=later)
    assert (await watch(http, token, "POST", {"watch": [renewal]})).status_code == 200
    channel = emulator.channels[1]
    assert channel.events == ("Leads.all", "Deals.edit", "Tasks.delete")
    assert channel.expires_at == clock() + 7200


async def test_notification_body(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """The callback body has Zoho's keys, the notify_url's query echoed, server_time in ms."""
    token = await access_token(emulator, http)
    await watch(http, token, "POST", {"watch": [item(1)]})
    body = emulator.notification(1, ids=["42"], operation="update", affected_fields=["Email"])
    assert body == {
        "server_time": int(clock() * 1000),
        "query_params": {"tenant": "7"},
        "module": "Leads",
        "resource_uri": f"{emulator.api_domain}/crm/v8/Leads",
        "ids": ["42"],
        "affected_fields": [{"42": ["Email"]}],
        "operation": "update",
        "channel_id": "1",
        "token": "s3cret",
    }
    assert emulator.notification(1, ids=["1"], operation="insert")["operation"] == "insert"
    with pytest.raises(LookupError, match=r"Deals\.create"):
        emulator.notification(1, ids=["1"], module="Deals", operation="insert")


async def test_notify_posts_to_the_notify_url(
    emulator: ZohoEmulator, http: httpx.AsyncClient
) -> None:
    """``notify`` POSTs the JSON body to the channel's notify_url, query included."""
    token = await access_token(emulator, http)
    await watch(http, token, "POST", {"watch": [item(1)]})
    seen: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as gateway:
        response = await emulator.notify(gateway, 1, ids=["9"], operation="delete")
    assert response.status_code == 200
    (request,) = seen
    assert str(request.url) == "https://gw.example/hooks/zoho?tenant=7"
    assert request.headers["content-type"] == "application/json"
    assert orjson.loads(request.content)["ids"] == ["9"]


def test_iso_has_an_offset() -> None:
    """Date-times carry a UTC offset, as Zoho wants them."""
    stamp = iso(1_800_000_000.5)
    assert stamp.endswith("+00:00")
    assert datetime.fromisoformat(stamp) == datetime.fromtimestamp(1_800_000_000, UTC)


async def test_unknown_path_and_method(emulator: ZohoEmulator, http: httpx.AsyncClient) -> None:
    """Unknown paths are 404, known paths with other methods 405."""
    assert (await http.get("/crm/v8/nowhere")).status_code == 404
    assert (await http.get("/oauth/v2/token")).status_code == 405
