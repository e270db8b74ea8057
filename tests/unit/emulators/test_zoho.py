"""The Zoho emulator: the accounts server, the Attachments API, its limits and faults, notifications."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from python_multipart.multipart import MAX_BOUNDARY_LENGTH

from patchbay.emulators.zoho import (
    WEEK,
    ConnectionDropped,
    Fault,
    Limits,
    ManualClock,
    ScaledClock,
    ZohoEmulator,
    iso,
)

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


# -- attachments -------------------------------------------------------------------------------

LEADS = "/crm/v8/Leads/1000000000001/Attachments"


async def bearer(emulator: ZohoEmulator, http: httpx.AsyncClient) -> dict[str, str]:
    """The Authorization header of a fresh access token."""
    return {"authorization": f"Zoho-oauthtoken {await access_token(emulator, http)}"}


async def upload(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    path: str = LEADS,
    content: bytes = b"hello",
    name: str = "report.pdf",
    **kwargs: Any,
) -> httpx.Response:
    """Upload ``content`` as the multipart ``file``."""
    files = {"file": (name, content, "application/pdf")}
    return await http.post(path, files=files, headers=headers, **kwargs)


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    """``data`` as a streamed body, ``size`` bytes at a time."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def multipart(content: bytes, boundary: str = "b0undary", **fields: str) -> bytes:
    """A multipart body with ``file`` and text ``fields``, built by hand."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def error(response: httpx.Response) -> tuple[int, str, Any]:
    """Status, code and details of a Zoho error answer."""
    body = response.json()
    assert body["status"] == "error" and set(body) == {"code", "details", "message", "status"}
    return response.status_code, body["code"], body["details"]


async def test_upload_answers_like_zoho(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """An upload answers with Zoho's envelope and lands in the ledger, hashed."""
    headers = await bearer(emulator, http)
    response = await upload(http, headers, content=b"%PDF-1.7 data")
    assert response.status_code == 200
    (item,) = response.json()["data"]
    assert (item["code"], item["message"], item["status"]) == (
        "SUCCESS",
        "attachment uploaded successfully",
        "success",
    )
    details = item["details"]
    assert set(details) == {"Modified_Time", "Modified_By", "Created_Time", "id", "Created_By"}
    assert details["Created_Time"] == iso(clock()) and details["id"].isdigit()
    assert set(details["Created_By"]) == {"name", "id"}
    (stored,) = emulator.uploads
    assert (stored.id, stored.module, stored.record_id, stored.file_name, stored.size) == (
        details["id"],
        "Leads",
        "1000000000001",
        "report.pdf",
        13,
    )
    assert stored.sha256 == hashlib.sha256(b"%PDF-1.7 data").hexdigest()
    assert stored.created_time == details["Created_Time"]
    assert (stored.content, stored.content_type) == (b"%PDF-1.7 data", "application/pdf")
    assert emulator.stored("leads", 1000000000001) == [stored]


async def test_size_limit_streams_and_is_exact() -> None:
    """A file of the limit is stored; one byte more is 413, after the whole body was read."""
    emulator = ZohoEmulator(max_upload_bytes=1000)
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://zoho.test") as http:
        headers = await bearer(emulator, http)
        headers["content-type"] = "multipart/form-data; boundary=b0undary"
        for size, status in ((1000, 200), (1001, 413), (5000, 413)):
            body = multipart(bytes(size))
            # Small chunks, so that the file straddles many of them.
            response = await http.post(LEADS, content=chunks(body, 7), headers=headers)
            assert response.status_code == status
        assert [u.size for u in emulator.uploads] == [1000]
        too_big = await http.post(LEADS, content=multipart(bytes(1001)), headers=headers)
        assert too_big.json() == {
            "status": "error",
            "code": "FILE_SIZE_MORE_THAN_ALLOWED_SIZE",
            "message": "Please check if the size of the file is in the correct range",
            "details": {},
        }


def test_default_limit_is_the_blogs_20_mib() -> None:
    """By default a file may have 20 MiB."""
    assert ZohoEmulator().max_upload_bytes == 20 * 1024 * 1024


async def test_links_in_query_form_or_multipart(
    emulator: ZohoEmulator, http: httpx.AsyncClient
) -> None:
    """A link is accepted in the query (the SDK), a form or multipart fields (the docs)."""
    headers = await bearer(emulator, http)
    link = {"attachmentUrl": "https://example.com/a", "title": "Spec"}
    answers = [
        await http.post(LEADS, params=link, headers=headers),
        await http.post(LEADS, data=link, headers=headers),
        await http.post(
            LEADS, files={"attachmentUrl": (None, link["attachmentUrl"])}, headers=headers
        ),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [(u.file_name, u.link_url, u.size) for u in emulator.uploads] == [
        ("Spec", "https://example.com/a", 0),
        ("Spec", "https://example.com/a", 0),
        ("https://example.com/a", "https://example.com/a", 0),
    ]
    listed = await http.get(LEADS, params={"fields": "File_Name,$type,$link_url"}, headers=headers)
    assert {(e["$type"], e["$link_url"]) for e in listed.json()["data"]} == {
        ("Link URL", "https://example.com/a")
    }
    download = await http.get(f"{LEADS}/{emulator.uploads[0].id}", headers=headers)
    assert error(download)[:2] == (400, "DOWNLOAD_NOT_ALLOWED")


async def test_file_or_link_never_both_nor_neither(
    emulator: ZohoEmulator, http: httpx.AsyncClient
) -> None:
    """Both a file and a link, neither, a bad link or title: refused, nothing stored."""
    headers = await bearer(emulator, http)
    both = await upload(http, headers, params={"attachmentUrl": "https://example.com"})
    assert error(both)[:2] == (400, "INVALID_DATA")
    neither = await http.post(LEADS, headers=headers)
    assert error(neither)[:2] == (400, "MANDATORY_NOT_FOUND")
    for link in ("ftp://example.com/x", "https://example.com/" + "x" * 3000):
        bad = await http.post(LEADS, params={"attachmentUrl": link}, headers=headers)
        assert error(bad)[:2] == (400, "INVALID_URL_PATTERN")
    long_title = {"attachmentUrl": "https://example.com", "title": "t" * 256}
    bad_title = await http.post(LEADS, params=long_title, headers=headers)
    assert error(bad_title) == (400, "INVALID_DATA", {"param_name": "title"})
    two = await http.post(
        LEADS, files=[("file", ("a", b"1")), ("file", ("b", b"2"))], headers=headers
    )
    assert error(two)[:2] == (400, "INVALID_DATA")
    headers["content-type"] = "multipart/form-data; boundary=b0undary"
    truncated = await http.post(LEADS, content=multipart(b"abc")[:-20], headers=headers)
    assert error(truncated)[:2] == (400, "INVALID_DATA")
    long_boundary = "b" * (MAX_BOUNDARY_LENGTH + 1)  # more than the parser takes
    headers["content-type"] = f"multipart/form-data; boundary={long_boundary}"
    too_long = await http.post(LEADS, content=multipart(b"abc", long_boundary), headers=headers)
    assert error(too_long)[:2] == (400, "INVALID_DATA")
    assert emulator.uploads == []


@pytest.mark.parametrize("module", ["Reports", "Dashboards", "Forecasts", "Users", "Nope"])
async def test_modules_without_attachments(
    emulator: ZohoEmulator, http: httpx.AsyncClient, module: str
) -> None:
    """Reports, Dashboards, Forecasts and unknown modules are INVALID_MODULE, path index 0."""
    headers = await bearer(emulator, http)
    response = await upload(http, headers, f"/crm/v8/{module}/1000000000001/Attachments")
    assert error(response) == (400, "INVALID_MODULE", {"resource_path_index": 0})
    assert response.json()["message"] == "the module name given seems to be invalid"


async def test_modules_and_records(emulator: ZohoEmulator, http: httpx.AsyncClient) -> None:
    """Standard and custom modules in any case; every numeric id exists, nothing else."""
    headers = await bearer(emulator, http)
    for path in (
        "/crm/v8/leads/42/Attachments",
        "/crm/v8/Price_Books/42/Attachments",
        "/crm/v8/CustomModule3/42/Attachments",
        "/crm/v2/Deals/42/Attachments",
    ):
        assert (await upload(http, headers, path)).status_code == 200, path
    assert [u.module for u in emulator.uploads] == [
        "Leads",
        "Price_Books",
        "CustomModule3",
        "Deals",
    ]
    for record in ("abc", "0", "-1", "99999999999999999999"):
        response = await upload(http, headers, f"/crm/v8/Leads/{record}/Attachments")
        assert error(response) == (400, "INVALID_DATA", {"resource_path_index": 1})
        assert response.json()["message"] == "the related id given seems to be invalid"
    v1 = await upload(http, headers, "/crm/v1/Leads/42/Attachments")
    assert error(v1)[:2] == (404, "INVALID_URL_PATTERN")


async def test_records_can_be_restricted() -> None:
    """With ``records``, only the ids listed (or added) exist."""
    emulator = ZohoEmulator(records={"Leads": [7]}, custom_modules=["Projects_X"])
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://zoho.test") as http:
        headers = await bearer(emulator, http)
        assert (await upload(http, headers, "/crm/v8/Leads/7/Attachments")).status_code == 200
        unknown = await upload(http, headers, "/crm/v8/Leads/8/Attachments")
        assert error(unknown)[:2] == (400, "INVALID_DATA")
        elsewhere = await upload(http, headers, "/crm/v8/Deals/7/Attachments")
        assert error(elsewhere)[:2] == (400, "INVALID_DATA")
        emulator.add_record("projects_x", 8)
        assert (await upload(http, headers, "/crm/v8/Projects_X/8/Attachments")).status_code == 200


async def test_tokens_and_scopes(emulator: ZohoEmulator, http: httpx.AsyncClient) -> None:
    """No token is AUTHENTICATION_FAILURE, a bad one INVALID_TOKEN, too few scopes a mismatch."""
    missing = await upload(http, {})
    assert error(missing)[:2] == (401, "AUTHENTICATION_FAILURE")
    wrong = await upload(http, {"authorization": "Zoho-oauthtoken 1000.nope"})
    assert error(wrong) == (401, "INVALID_TOKEN", {})
    read_only = emulator.accounts.new_refresh_token(["ZohoCRM.modules.attachments.READ"])
    fields = grant(emulator, refresh_token=read_only)
    token = (await http.post("/oauth/v2/token", data=fields)).json()["access_token"]
    headers = {"authorization": f"Zoho-oauthtoken {token}"}
    refused = await upload(http, headers)
    assert error(refused) == (401, "OAUTH_SCOPE_MISMATCH", {})
    assert (await http.get(LEADS, params={"fields": "id"}, headers=headers)).status_code == 200
    writer = emulator.accounts.new_refresh_token(["zohocrm.modules.attachments.write"])
    fields = grant(emulator, refresh_token=writer)
    token = (await http.post("/oauth/v2/token", data=fields)).json()["access_token"]
    assert (await upload(http, {"authorization": f"Zoho-oauthtoken {token}"})).status_code == 200


async def test_list_requires_fields_and_paginates(
    emulator: ZohoEmulator, http: httpx.AsyncClient
) -> None:
    """``fields`` is required; pages of ``per_page`` go newest first, by page or page token."""
    headers = await bearer(emulator, http)
    for n in range(5):
        await upload(http, headers, name=f"f{n}.txt")
    missing = await http.get(LEADS, headers=headers)
    assert error(missing) == (400, "REQUIRED_PARAM_MISSING", {"param_name": "fields"})
    names: list[str] = []
    params = {"fields": "File_Name", "per_page": "2"}
    pages = 0
    while True:
        body = (await http.get(LEADS, params=params, headers=headers)).json()
        pages += 1
        assert all(set(e) == {"id", "File_Name"} for e in body["data"])
        names += [e["File_Name"] for e in body["data"]]
        info = body["info"]
        assert set(info) == {
            "per_page",
            "next_page_token",
            "count",
            "page",
            "previous_page_token",
            "page_token_expiry",
            "more_records",
        }
        assert (info["page"], info["count"]) == (pages, len(body["data"]))
        if not info["more_records"]:
            assert info["next_page_token"] is None
            break
        params["page_token"] = info["next_page_token"]
    assert names == ["f4.txt", "f3.txt", "f2.txt", "f1.txt", "f0.txt"]
    second = await http.get(
        LEADS, params={"fields": "id", "per_page": "2", "page": "2"}, headers=headers
    )
    assert [e["id"] for e in second.json()["data"]] == [u.id for u in emulator.uploads[2:0:-1]]
    wanted = f"{emulator.uploads[0].id},{emulator.uploads[3].id}"
    chosen = await http.get(LEADS, params={"fields": "id", "ids": wanted}, headers=headers)
    assert len(chosen.json()["data"]) == 2
    for bad in ({"per_page": "201"}, {"per_page": "0"}, {"page_token": "nope"}, {"page": "x"}):
        response = await http.get(LEADS, params={"fields": "id", **bad}, headers=headers)
        assert error(response)[:2] == (400, "INVALID_DATA"), bad
    empty = await http.get("/crm/v8/Leads/5/Attachments", params={"fields": "id"}, headers=headers)
    assert empty.json()["data"] == [] and empty.json()["info"]["count"] == 0


async def test_download_and_delete(emulator: ZohoEmulator, http: httpx.AsyncClient) -> None:
    """Download returns the bytes; delete answers "record deleted"; the ledger keeps it."""
    headers = await bearer(emulator, http)
    for n in range(3):
        await upload(http, headers, content=b"x" * n, name=f"r\u00e9sum\u00e9 {n}.pdf")
    first, second, third = emulator.uploads
    download = await http.get(f"{LEADS}/{second.id}", headers=headers)
    assert (download.status_code, download.content) == (200, b"x")
    assert download.headers["content-type"] == "application/pdf"
    assert download.headers["content-disposition"].endswith("r%C3%A9sum%C3%A9%201.pdf")
    deleted = await http.delete(f"{LEADS}/{second.id}", headers=headers)
    assert deleted.json() == {
        "data": [
            {
                "code": "SUCCESS",
                "details": {"id": second.id},
                "message": "record deleted",
                "status": "success",
            }
        ]
    }
    again = await http.delete(f"{LEADS}/{second.id}", headers=headers)
    assert error(again) == (400, "INVALID_DATA", {"resource_path_index": 3})
    gone = await http.get(f"{LEADS}/{second.id}", headers=headers)
    assert error(gone)[:2] == (404, "INVALID_DATA")
    many = await http.delete(LEADS, params={"ids": f"{first.id},123"}, headers=headers)
    assert many.status_code == 207
    assert [r["status"] for r in many.json()["data"]] == ["success", "error"]
    assert error(await http.delete(LEADS, headers=headers))[:2] == (400, "REQUIRED_PARAM_MISSING")
    assert [u.live for u in emulator.uploads] == [False, False, True]
    assert emulator.stored() == [third]


# -- limits ------------------------------------------------------------------------------------


async def test_sixty_uploads_a_minute_then_a_five_minute_block(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """The 61st upload within a sliding minute is 429 and blocks every API call for 5 minutes."""
    headers = await bearer(emulator, http)
    for _ in range(60):
        assert (await upload(http, headers)).status_code == 200
        clock.advance(0.5)
    assert emulator.blocked_count == 0
    overflow = await upload(http, headers)
    assert error(overflow) == (429, "TOO_MANY_REQUESTS", {})
    assert "retry-after" not in overflow.headers
    assert [(b.started, b.until) for b in emulator.block_events] == [(clock(), clock() + 300)]
    clock.advance(299)
    headers = await bearer(emulator, http)  # the accounts server is not blocked
    listed = await http.get(LEADS, params={"fields": "id"}, headers=headers)
    assert listed.status_code == 429
    assert (await watch(http, headers["authorization"].split()[1], "GET")).status_code == 429
    clock.advance(1)
    assert (await upload(http, headers)).status_code == 200
    assert len(emulator.uploads) == 61 and emulator.blocked_count == 1
    assert emulator.limits.refused == 3


async def test_the_minute_slides(
    emulator: ZohoEmulator, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Sixty uploads a minute, evenly spread, never block."""
    headers = await bearer(emulator, http)
    for _ in range(150):
        assert (await upload(http, headers)).status_code == 200
        clock.advance(1)
    assert emulator.blocked_count == 0
    assert emulator.limits.max_uploads_within() == 60
    assert len(emulator.upload_times) == 150


async def test_the_upload_rule_can_be_off_or_v1s_other_variant() -> None:
    """``upload_limit=None`` switches the rule off; 15 per 5 minutes is configurable."""
    clock = ManualClock()
    for options, sent, blocked in (
        ({"upload_limit": None}, 100, 0),
        ({"upload_limit": 15, "upload_window": 300, "block_seconds": 900}, 16, 1),
    ):
        emulator = ZohoEmulator(clock=clock, **options)
        transport = httpx.ASGITransport(app=emulator)
        async with httpx.AsyncClient(transport=transport, base_url="http://z.test") as http:
            headers = await bearer(emulator, http)
            answers = [(await upload(http, headers)).status_code for _ in range(sent)]
        assert emulator.blocked_count == blocked
        assert answers.count(429) == blocked
        if blocked:
            assert emulator.block_events[0].until == clock() + 900


def test_scaled_clock_runs_faster() -> None:
    """``ScaledClock(60)``: a real second counts as an emulated minute."""
    clock = ScaledClock(60, start=1_000.0)
    began, first = time.monotonic(), clock()
    time.sleep(0.05)
    last, ended = clock(), time.monotonic()
    assert first >= 1_000.0 and 60 * 0.05 <= last - first <= 60 * (ended - began)
    assert clock.real(300) == 5.0
    with pytest.raises(ValueError, match="positive"):
        ScaledClock(0)


async def test_limit_clock_is_separate() -> None:
    """The limits may run on their own clock while tokens stay on the main one."""
    clock, fast = ManualClock(), ManualClock(5_000.0)
    emulator = ZohoEmulator(clock=clock, limit_clock=fast, upload_limit=2)
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://z.test") as http:
        headers = await bearer(emulator, http)
        statuses = [(await upload(http, headers)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        fast.advance(300)  # the block is over on the limit clock only
        assert (await upload(http, headers)).status_code == 200
    assert emulator.upload_times == [5_000.0, 5_000.0, 5_300.0]
    assert emulator.calls[-1].limit_at == 5_300.0 and emulator.calls[-1].at == clock()


async def test_credits_and_concurrency() -> None:
    """24-hour credits run out into 429 (remaining shown past half); so does concurrency."""
    clock = ManualClock()
    emulator = ZohoEmulator(clock=clock, daily_credits=4, rate_limit_code="RATE_LIMIT_EXCEEDED")
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://z.test") as http:
        headers = await bearer(emulator, http)
        answers = [await upload(http, headers) for _ in range(5)]
        assert [r.status_code for r in answers] == [200, 200, 200, 200, 429]
        remaining = [r.headers.get("x-api-credits-remaining") for r in answers]
        assert remaining == [None, "2", "1", "0", "0"]
        assert error(answers[-1])[1] == "RATE_LIMIT_EXCEEDED"
        clock.advance(86400)
        headers = await bearer(emulator, http)  # the old token expired long ago
        assert (await upload(http, headers)).status_code == 200

    emulator = ZohoEmulator(concurrency_limit=1)
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://z.test") as http:
        headers = await bearer(emulator, http)
        emulator.inject(Fault.slow(0.5))
        slow = asyncio.create_task(upload(http, headers))
        await asyncio.sleep(0.1)
        assert (await upload(http, headers)).status_code == 429
        assert (await slow).status_code == 200
    assert emulator.peak_in_flight == 2


def test_max_uploads_within_a_window() -> None:
    """The busiest sliding window is counted from the admitted uploads."""
    limits = Limits(clock=ManualClock(), upload_limit=None)
    limits.upload_times.extend([0.0, 10.0, 59.9, 60.0, 61.0, 200.0])
    assert limits.max_uploads_within() == 4  # 10, 59.9, 60, 61
    assert limits.max_uploads_within(1.0) == 2


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault.http(429), 429, "TOO_MANY_REQUESTS"),
        (Fault.http(500), 500, "INTERNAL_ERROR"),
        (Fault.http(503), 503, "SERVICE_UNAVAILABLE"),
        (Fault.http(413), 413, "FILE_SIZE_MORE_THAN_ALLOWED_SIZE"),
        (
            Fault.http(400, "INVALID_MODULE", "the module name given seems to be invalid"),
            400,
            "INVALID_MODULE",
        ),
    ],
)
async def test_http_faults_answer_with_zohos_bodies(
    emulator: ZohoEmulator, http: httpx.AsyncClient, fault: Fault, status: int, code: str
) -> None:
    """An injected error answers as Zoho does and stores nothing; the next call is normal."""
    headers = await bearer(emulator, http)
    emulator.inject(fault)
    assert error(await upload(http, headers))[:2] == (status, code)
    assert emulator.uploads == []
    assert (await upload(http, headers)).status_code == 200


def test_fault_needs_a_code_for_other_statuses() -> None:
    """Zoho's body is known for a few statuses only; others need their code."""
    with pytest.raises(ValueError, match="418"):
        Fault.http(418)
    assert Fault.http(418, "TEAPOT").body == {
        "code": "TEAPOT",
        "details": {},
        "message": "TEAPOT",
        "status": "error",
    }
    assert Fault.http(429, "RATE_LIMIT_EXCEEDED").body == {
        "code": "RATE_LIMIT_EXCEEDED",
        "details": {},
        "message": "API rate limit exceeded. Please retry after some time",
        "status": "error",
    }


async def test_faults_by_record_method_and_call_number(
    emulator: ZohoEmulator, http: httpx.AsyncClient
) -> None:
    """Scripts match a record id, a method, or start at a call number; None lets one through."""
    headers = await bearer(emulator, http)
    emulator.inject(Fault.http(500), None, Fault.http(503), record_id=2)
    emulator.inject(Fault.http(500), method="GET", call=2)
    statuses = []
    for record in (1, 2, 1, 2, 2, 2):
        path = f"/crm/v8/Leads/{record}/Attachments"
        statuses.append((await upload(http, headers, path)).status_code)
    assert statuses == [200, 500, 200, 200, 503, 200]
    lists = [
        (await http.get(LEADS, params={"fields": "id"}, headers=headers)).status_code
        for _ in range(3)
    ]
    assert lists == [200, 500, 200]
    assert emulator.scripts == []
    third = emulator.inject(Fault.http(503), call=9)  # the 9th upload; 6 were made
    assert [(await upload(http, headers)).status_code for _ in range(3)] == [200, 200, 503]
    assert not third.faults
    emulator.inject(Fault.http(500))
    emulator.clear_faults()
    assert (await upload(http, headers)).status_code == 200


async def test_dropped_connections_in_process(
    emulator: ZohoEmulator, http: httpx.AsyncClient
) -> None:
    """A drop raises a transport error in the client; only drop_after stored the upload."""
    headers = await bearer(emulator, http)
    emulator.inject(Fault.drop_before(), Fault.drop_after())
    with pytest.raises(httpx.TransportError):
        await upload(http, headers, name="before.txt")
    with pytest.raises(ConnectionDropped):
        await upload(http, headers, name="after.txt")
    assert [u.file_name for u in emulator.uploads] == ["after.txt"]
    assert [c.status for c in emulator.calls if c.path == LEADS] == [0, 0]


async def test_slow_answers(emulator: ZohoEmulator, http: httpx.AsyncClient) -> None:
    """A slow fault answers normally, late; a delay can hold back an error too."""
    headers = await bearer(emulator, http)
    emulator.inject(Fault.slow(0.2), Fault.http(503, delay=0.2))
    for status in (200, 503):
        began = time.monotonic()
        assert (await upload(http, headers)).status_code == status
        assert time.monotonic() - began >= 0.19
    assert len(emulator.uploads) == 1


async def test_ids_are_unique_across_emulators() -> None:
    """Two emulators (say, before and after a restart) do not hand out the same ids."""
    ids: list[str] = []
    for _ in range(2):
        emulator = ZohoEmulator()
        transport = httpx.ASGITransport(app=emulator)
        async with httpx.AsyncClient(transport=transport, base_url="http://z.test") as http:
            headers = await bearer(emulator, http)
            await upload(http, headers)
        ids += [u.id for u in emulator.uploads]
    assert len(set(ids)) == 2 and all(len(i) == 19 for i in ids)
