"""The CRM client against the emulated Zoho (in process) and a shared SQLite store."""

from __future__ import annotations

import asyncio
import hashlib
import random
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import pytest

from patchbay.crm.client import CrmClient
from patchbay.crm.oauth import ZohoRateLimited, ZohoUnavailable
from patchbay.crm.zoho import (
    MB,
    FileTooLarge,
    InvalidAttachment,
    UnsupportedModule,
    ZohoAccessDenied,
    ZohoInvalidRequest,
    ZohoNotFound,
    ZohoUncertain,
)
from patchbay.emulators.zoho import Fault, ManualClock, ZohoEmulator
from patchbay.errors import ConfigError
from patchbay.jobs.sqlite import SqliteStore
from patchbay.settings import CrmSettings
from tests.unit.crm.conftest import FakeSleep

ACCOUNTS = "http://accounts.zoho.test"
RECORD = "5725767000000412345"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Make(Protocol):
    """Builds a client for the emulator (closed after the test)."""

    def __call__(self, *, app: Any = None, shared: bool = True, **settings: Any) -> CrmClient: ...


def crm_settings(emulator: ZohoEmulator, **changes: Any) -> CrmSettings:
    """Settings the emulator accepts; the API host comes from the token's api_domain."""
    values: dict[str, Any] = {
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        "refresh_token": emulator.refresh_token,
        "accounts_url": ACCOUNTS,
        **changes,
    }
    return CrmSettings(**values)


@pytest.fixture
def emulator(clock: ManualClock) -> ZohoEmulator:
    """A fresh emulated Zoho, with the v1 upload rule on (its default)."""
    return ZohoEmulator(clock=clock)


@pytest.fixture
async def make(
    emulator: ZohoEmulator, store: SqliteStore, clock: ManualClock, sleep: FakeSleep
) -> AsyncIterator[Make]:
    """Clients as separate processes would have them: each its own HTTP client, one store."""
    fake_sleep = sleep
    made: list[tuple[CrmClient, httpx.AsyncClient]] = []

    def build(
        *,
        app: Any = None,
        shared: bool = True,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        **changes: Any,
    ) -> CrmClient:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app or emulator))
        client = CrmClient(
            crm_settings(emulator, **changes),
            store=store if shared else None,
            http=http,
            clock=clock,
            sleep=sleep or fake_sleep,
            rng=random.Random(len(made)),
        )
        made.append((client, http))
        return client

    yield build
    for client, http in made:
        await client.aclose()
        await http.aclose()


@pytest.fixture
def crm(make: Make) -> CrmClient:
    """One client."""
    return make()


def write(path: Path, size: int, seed: int = 0) -> str:
    """A file of ``size`` random bytes; its sha256."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def partial_files(directory: Path) -> list[str]:
    """Downloads left half-written."""
    return [p.name for p in directory.iterdir() if p.name.endswith(".part")]


def api_calls(emulator: ZohoEmulator, method: str | None = None) -> list[int]:
    """The statuses of the Attachments API calls the emulator answered (0: dropped)."""
    return [
        c.status
        for c in emulator.calls
        if "/Attachments" in c.path and (method is None or c.method == method)
    ]


# -- the round trip ----------------------------------------------------------------------------


async def test_upload_list_download_delete(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """A file goes up, is listed, comes back byte for byte, and is deleted."""
    source = tmp_path / "report.pdf"
    digest = write(source, 300_000)
    seen: list[tuple[int, int]] = []
    attachment = await crm.upload(
        "Leads", RECORD, source, progress=lambda sent, total: seen.append((sent, total))
    )
    assert (attachment.file_name, attachment.size) == ("report.pdf", 300_000)
    assert seen[-1] == (300_000, 300_000) and len(seen) == 5  # 64 KiB chunks
    (stored,) = emulator.stored("Leads", RECORD)
    assert (stored.id, stored.sha256, stored.content_type) == (
        attachment.id,
        digest,
        "application/pdf",
    )
    (listed,) = await crm.list("leads", RECORD)
    assert (listed.id, listed.file_name, listed.size) == (attachment.id, "report.pdf", 300_000)
    assert listed.created_time == attachment.created_time
    got = await crm.download("Leads", RECORD, attachment.id, tmp_path / "back.pdf")
    assert got.size == 300_000 and got.file_name == "report.pdf"
    assert got.content_type == "application/pdf"
    assert hashlib.sha256((tmp_path / "back.pdf").read_bytes()).hexdigest() == digest
    assert partial_files(tmp_path) == []
    await crm.delete("Leads", RECORD, attachment.id)
    assert await crm.list("Leads", RECORD) == []
    assert emulator.stored() == []


async def test_file_name_is_sent_as_given(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """``file_name`` overrides the path's name, non-ASCII included."""
    source = tmp_path / "upload.tmp"
    write(source, 10)
    attachment = await crm.upload("Deals", RECORD, source, file_name="Résumé 2026.txt")
    assert emulator.stored()[0].file_name == "Résumé 2026.txt" == attachment.file_name
    got = await crm.download("Deals", RECORD, attachment.id, tmp_path / "x")
    assert got.file_name == "Résumé 2026.txt"


async def test_attach_url(crm: CrmClient, emulator: ZohoEmulator) -> None:
    """A link is attached with its title; Patchbay fetches nothing."""
    link = "https://example.com/quote?id=7&x=%20y"
    attachment = await crm.attach_url("Contacts", RECORD, link, title="The quote")
    (stored,) = emulator.stored()
    assert (stored.link_url, stored.file_name) == (link, "The quote")
    assert (attachment.id, attachment.link_url, attachment.size) == (stored.id, link, None)
    (listed,) = await crm.list("Contacts", RECORD)
    assert listed.is_link and listed.link_url == link and listed.file_name == "The quote"
    with pytest.raises(ZohoInvalidRequest) as caught:  # Zoho: DOWNLOAD_NOT_ALLOWED
        await crm.download("Contacts", RECORD, attachment.id, "/nonexistent/never-written")
    assert caught.value.zoho_code == "DOWNLOAD_NOT_ALLOWED"


async def test_api_version_is_configurable(make: Make, emulator: ZohoEmulator) -> None:
    """``api_version`` is the path's version segment."""
    crm = make(api_version="v7")
    assert await crm.list("Leads", RECORD) == []
    assert emulator.calls[-1].path == f"/crm/v7/Leads/{RECORD}/Attachments"


async def test_list_pages(crm: CrmClient, emulator: ZohoEmulator, clock: ManualClock) -> None:
    """More than 200 attachments are listed across pages (page tokens)."""
    for i in range(205):
        await crm.attach_url("Leads", RECORD, f"https://example.com/{i}")
        clock.advance(1.5)  # within the seed's 60 uploads a minute
    listed = await crm.list("Leads", RECORD)
    assert len(listed) == 205 and len({a.id for a in listed}) == 205
    assert api_calls(emulator, "GET") == [200, 200]


# -- local refusals: nothing is sent -----------------------------------------------------------


async def test_too_large_is_refused_before_any_request(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """A 21 MB file: the seed's exact message, and the emulator saw no call at all."""
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(21 * MB)  # sparse: nothing is written
    with pytest.raises(FileTooLarge) as caught:
        await crm.upload("Leads", RECORD, big)
    assert str(caught.value) == "File size should not exceed 20 MB"
    assert caught.value.status == 413
    assert emulator.calls == []


async def test_the_limit_is_configurable(
    make: Make, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """Another limit is named in MB the same way."""
    crm = make(max_file_bytes=5 * MB)
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(5 * MB + 1)
    with pytest.raises(FileTooLarge, match=r"^File size should not exceed 5 MB$"):
        await crm.upload("Leads", RECORD, big)
    assert emulator.calls == []


@pytest.mark.parametrize("module", ["Reports", "Dashboards", "Forecasts", "bad/module"])
async def test_invalid_module_is_refused_locally(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path, module: str
) -> None:
    """Modules that take no attachments never reach Zoho."""
    source = tmp_path / "a.txt"
    write(source, 10)
    with pytest.raises(UnsupportedModule):
        await crm.upload(module, RECORD, source)
    with pytest.raises(UnsupportedModule):
        await crm.attach_url(module, RECORD, "https://example.com")
    assert emulator.calls == []


async def test_file_and_url_both_or_neither(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """``attach`` takes exactly one of a file and a URL, and refuses before any request."""
    source = tmp_path / "a.txt"
    write(source, 10)
    with pytest.raises(InvalidAttachment, match="not both"):
        await crm.attach("Leads", RECORD, path=source, url="https://example.com")
    with pytest.raises(InvalidAttachment, match="give a file or an attachmentUrl"):
        await crm.attach("Leads", RECORD)
    with pytest.raises(InvalidAttachment, match="http"):
        await crm.attach("Leads", RECORD, url="file:///etc/passwd")
    with pytest.raises(InvalidAttachment, match="cannot read"):
        await crm.attach("Leads", RECORD, path=tmp_path / "missing.txt")
    with pytest.raises(InvalidAttachment, match=r"cannot read|not a regular file"):
        await crm.upload("Leads", RECORD, tmp_path, file_name="dir.txt")
    assert emulator.calls == []
    assert (await crm.attach("Leads", RECORD, path=source)).size == 10
    assert (await crm.attach("Leads", RECORD, url="https://example.com")).is_link


async def test_unconfigured_settings_are_a_config_error() -> None:
    """Without credentials there is no client."""
    with pytest.raises(ConfigError, match=r"crm\.client_id"):
        CrmClient(CrmSettings(), store=None)


# -- Zoho's refusals, typed --------------------------------------------------------------------


async def test_zoho_refusals_are_typed(clock: ManualClock, tmp_path: Path) -> None:
    """Unknown record: ZohoNotFound; unknown custom module: invalid; missing scope: denied."""
    emulator = ZohoEmulator(clock=clock, records={"Leads": [RECORD]}, scopes=("ZohoCRM.users.ALL",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as http:
        crm = CrmClient(crm_settings(emulator), store=None, http=http, clock=clock)
        with pytest.raises(ZohoAccessDenied) as denied:
            await crm.list("Leads", RECORD)
        assert denied.value.zoho_code == "OAUTH_SCOPE_MISMATCH"
        emulator.accounts.grants[emulator.refresh_token].scopes = frozenset(
            {"zohocrm.modules.all"}  # the emulator keeps them lower-case, as Zoho compares
        )
        await crm.aclose()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as http:
        crm = CrmClient(crm_settings(emulator), store=None, http=http, clock=clock)
        with pytest.raises(ZohoNotFound):
            await crm.list("Leads", "1234")
        with pytest.raises(ZohoInvalidRequest) as invalid:
            await crm.list("MyModule", RECORD)
        assert invalid.value.zoho_code == "INVALID_MODULE"
        with pytest.raises(ZohoNotFound):
            await crm.delete("Leads", RECORD, "999")
        with pytest.raises(ZohoNotFound):
            await crm.download("Leads", RECORD, "999", tmp_path / "x")
        assert not (tmp_path / "x").exists()
        await crm.aclose()


async def test_a_final_error_is_not_retried(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """A 400 is final: one request, no backoff."""
    source = tmp_path / "a.txt"
    write(source, 10)
    emulator.inject(Fault.http(400, "INVALID_DATA", "invalid data provided"))
    with pytest.raises(ZohoInvalidRequest):
        await crm.upload("Leads", RECORD, source)
    assert api_calls(emulator) == [400]


# -- tokens ------------------------------------------------------------------------------------


async def test_invalid_token_refreshes_once_and_resends(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """401 INVALID_TOKEN: one refresh, the upload sent again (whole), stored once."""
    source = tmp_path / "a.bin"
    digest = write(source, 200_000)
    await crm.list("Leads", RECORD)
    token = await crm.tokens.token()
    emulator.accounts.expire(token.value)
    await crm.upload("Leads", RECORD, source)
    assert emulator.accounts.refreshes == 2
    assert api_calls(emulator, "POST") == [401, 200]
    (stored,) = emulator.stored()
    assert stored.sha256 == digest


async def test_burst_across_an_expiry_refreshes_once(
    clock: ManualClock, store: SqliteStore, sleep: FakeSleep, tmp_path: Path
) -> None:
    """With 60 s tokens, 20 concurrent uploads after the token went stale share one refresh."""
    emulator = ZohoEmulator(clock=clock, token_lifetime=60)
    source = tmp_path / "a.txt"
    write(source, 1000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as http:
        crm = CrmClient(crm_settings(emulator), store=store, http=http, clock=clock, sleep=sleep)
        await crm.list("Leads", RECORD)
        assert emulator.accounts.refreshes == 1
        clock.advance(61)  # expired
        done = await asyncio.gather(*(crm.upload("Leads", RECORD, source) for _ in range(20)))
        assert len({a.id for a in done}) == 20
        assert emulator.accounts.refreshes == 2
        assert 401 not in api_calls(emulator)
        await crm.aclose()


async def test_two_clients_sharing_a_store_refresh_once(make: Make, emulator: ZohoEmulator) -> None:
    """Two processes' clients on one SQLite store: one refresh between them."""
    a, b = make(), make()
    await asyncio.gather(*(c.list("Leads", RECORD) for c in (a, b, a, b, a, b)))
    assert emulator.accounts.refreshes == 1
    c = make()  # a restart: the stored token is still good
    await c.list("Leads", RECORD)
    assert emulator.accounts.refreshes == 1


async def test_a_long_budget_wait_is_left_to_the_job(
    make: Make, emulator: ZohoEmulator, store: SqliteStore, sleep: FakeSleep
) -> None:
    """A refresh budget spent for minutes is raised at once, not slept in the call."""
    for _ in range(10):
        assert await store.take("zoho-refresh", 10, 600) == 0
    crm = make()
    with pytest.raises(ZohoRateLimited) as caught:
        await crm.list("Leads", RECORD)
    assert caught.value.retry_after is not None and caught.value.retry_after > 500
    assert sleep.slept == [] and emulator.calls == []


# -- limits ------------------------------------------------------------------------------------


async def test_sixty_uploads_a_minute_never_trigger_the_block(
    clock: ManualClock, store: SqliteStore, sleep: FakeSleep, tmp_path: Path
) -> None:
    """calls_per_minute=60 on a fake clock: 200 uploads, never 61 in a minute, no 5-min block."""
    emulator = ZohoEmulator(clock=clock)
    source = tmp_path / "a.txt"
    write(source, 100)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as http:
        clients = [
            CrmClient(
                crm_settings(emulator, calls_per_minute=60),
                store=store,
                http=http,
                clock=clock,
                sleep=sleep,
                rng=random.Random(i),
            )
            for i in range(2)
        ]
        await asyncio.gather(*(clients[i % 2].upload("Leads", RECORD, source) for i in range(200)))
        for client in clients:
            await client.aclose()
    assert len(emulator.stored()) == 200
    assert sum(c.limiter.waits for c in clients) > 0  # the limiter did hold calls back
    assert emulator.blocked_count == 0
    assert emulator.limits.max_uploads_within(60) <= 60
    assert api_calls(emulator) == [200] * 200


async def test_without_the_limiter_the_emulator_blocks(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """The control: calls_per_minute=0 meets the seed's rule and its 429 (then gives up)."""
    source = tmp_path / "a.txt"
    write(source, 10)
    results = await asyncio.gather(
        *(crm.upload("Leads", RECORD, source) for _ in range(61)), return_exceptions=True
    )
    assert emulator.blocked_count == 1
    assert any(isinstance(r, ZohoRateLimited) for r in results)


async def test_concurrency_is_server_wide(
    make: Make, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """Two clients, three slots: Zoho never sees more than three requests at once."""
    source = tmp_path / "a.txt"
    write(source, 10)
    # Real sleeps while waiting for a slot: virtual ones would run the slots' leases out.
    a, b = make(concurrency=3, sleep=asyncio.sleep), make(concurrency=3, sleep=asyncio.sleep)
    emulator.inject(*[Fault.slow(0.01)] * 24, method=None)
    await asyncio.gather(*((a, b)[i % 2].upload("Leads", RECORD, source) for i in range(24)))
    assert emulator.peak_in_flight == 3
    assert len(emulator.stored()) == 24


async def test_429_and_503_back_off_then_succeed(
    crm: CrmClient, emulator: ZohoEmulator, sleep: FakeSleep, tmp_path: Path
) -> None:
    """A 429 and a 503 are retried after jittered waits; the file is stored once."""
    source = tmp_path / "a.txt"
    write(source, 10)
    emulator.inject(Fault.http(429), Fault.http(503))
    attachment = await crm.upload("Leads", RECORD, source)
    assert api_calls(emulator, "POST") == [429, 503, 200]
    # After the 503 (an answer to a whole request) the record is looked at before resending.
    assert api_calls(emulator, "GET") == [200]
    assert [a.id for a in emulator.stored()] == [attachment.id]
    assert len(sleep.slept) == 2
    assert 0 <= sleep.slept[0] <= 1.0 and 0 <= sleep.slept[1] <= 2.0  # full jitter


async def test_retries_run_out(crm: CrmClient, emulator: ZohoEmulator) -> None:
    """Four 503s to a list: ZohoUnavailable after four tries."""
    emulator.inject(*[Fault.http(503)] * 4, method="GET")
    with pytest.raises(ZohoUnavailable):
        await crm.list("Leads", RECORD)
    assert api_calls(emulator) == [503] * 4


# -- never lost, never doubled -----------------------------------------------------------------


async def test_drop_after_is_not_doubled(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """Stored, then the connection dropped: the list finds it, nothing is sent again."""
    source = tmp_path / "a.txt"
    write(source, 1234)
    emulator.inject(Fault.drop_after())
    attachment = await crm.upload("Leads", RECORD, source, file_name="Ünïcode name.txt")
    assert len(emulator.uploads) == 1
    assert attachment.id == emulator.uploads[0].id
    assert api_calls(emulator, "POST") == [0]
    assert api_calls(emulator, "GET") == [200]


async def test_drop_before_is_retried_and_stored_once(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """Dropped before processing: the list shows nothing, so it is sent again, once."""
    source = tmp_path / "a.txt"
    write(source, 1234)
    emulator.inject(Fault.drop_before())
    attachment = await crm.upload("Leads", RECORD, source)
    assert [a.id for a in emulator.uploads] == [attachment.id]
    assert api_calls(emulator, "POST") == [0, 200]


async def test_an_earlier_identical_file_is_not_taken_for_ours(
    crm: CrmClient, emulator: ZohoEmulator, clock: ManualClock, tmp_path: Path
) -> None:
    """The same name and size uploaded long before the first attempt does not count."""
    source = tmp_path / "a.txt"
    write(source, 1234)
    older = await crm.upload("Leads", RECORD, source)
    clock.advance(3600)
    emulator.inject(Fault.drop_before())
    newer = await crm.upload("Leads", RECORD, source)
    assert newer.id != older.id and len(emulator.uploads) == 2


async def test_uncertain_then_called_again_with_since(
    crm: CrmClient, emulator: ZohoEmulator, clock: ManualClock, tmp_path: Path
) -> None:
    """Stored but unconfirmable: ZohoUncertain; the job's next call with ``since`` finds it."""
    source = tmp_path / "a.txt"
    write(source, 1234)
    first_attempt = clock()
    emulator.inject(Fault.drop_after())
    emulator.inject(*[Fault.http(503)] * 3, method="GET")
    with pytest.raises(ZohoUncertain):
        await crm.upload("Leads", RECORD, source)
    clock.advance(120)  # the job retries later
    attachment = await crm.upload("Leads", RECORD, source, since=first_attempt)
    assert [a.id for a in emulator.uploads] == [attachment.id]
    assert api_calls(emulator, "POST") == [0]


async def test_since_with_nothing_stored_uploads(
    crm: CrmClient, emulator: ZohoEmulator, clock: ManualClock, tmp_path: Path
) -> None:
    """``since`` when the earlier try never arrived: a look, then one upload."""
    source = tmp_path / "a.txt"
    write(source, 1234)
    attachment = await crm.upload("Leads", RECORD, source, since=clock() - 60)
    assert [a.id for a in emulator.uploads] == [attachment.id]
    assert api_calls(emulator) == [200, 200]  # GET, then POST


async def test_link_after_a_drop_is_not_doubled(crm: CrmClient, emulator: ZohoEmulator) -> None:
    """The same list-and-match protects a link."""
    emulator.inject(Fault.drop_after())
    attachment = await crm.attach_url("Leads", RECORD, "https://example.com/x", title="X")
    assert [a.id for a in emulator.uploads] == [attachment.id]


async def test_delete_after_a_drop_counts_as_deleted(
    crm: CrmClient, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """Deleted, answer lost: the retry's "not found" means done."""
    source = tmp_path / "a.txt"
    write(source, 10)
    attachment = await crm.upload("Leads", RECORD, source)
    emulator.inject(Fault.drop_after(), method="DELETE")
    await crm.delete("Leads", RECORD, attachment.id)
    assert emulator.stored() == []
    assert api_calls(emulator, "DELETE") == [0, 400]


# -- memory ------------------------------------------------------------------------------------


class Sink:
    """The emulator, except that uploads are hashed and discarded instead of kept in memory.

    The emulator stores what it receives (20 MB in this process, which tracemalloc would count
    against the client); this stands in for Zoho's side of the wire.
    """

    def __init__(self, emulator: ZohoEmulator) -> None:
        self.emulator = emulator
        self.received = 0
        self.digest = hashlib.sha256()
        self.headers: dict[bytes, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or "/Attachments" not in str(scope["path"])
        ):
            await self.emulator(scope, receive, send)
            return
        self.headers = dict(scope["headers"])
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            self.received += len(chunk)
            self.digest.update(chunk)
            if not message.get("more_body", False):
                break
        details = {"id": "1", "Created_Time": "2026-11-28T10:00:00+00:00"}
        body = orjson.dumps({"data": [{"code": "SUCCESS", "details": details}]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def test_a_20_mb_upload_is_streamed(
    make: Make, emulator: ZohoEmulator, tmp_path: Path
) -> None:
    """Uploading 20 MB keeps Python's peak allocation under 5 MB (the SDK needs 42.6 MiB)."""
    source = tmp_path / "big.bin"
    size = 20 * MB
    with source.open("wb") as f:
        for i in range(20):
            f.write(random.Random(i).randbytes(MB))
    sink = Sink(emulator)
    crm = make(app=sink)
    await crm.list("Leads", RECORD)  # the token and connections first: not the upload's cost
    tracemalloc.start()
    try:
        attachment = await crm.upload("Leads", RECORD, source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert attachment.size == size
    content_length = int(sink.headers[b"content-length"])
    assert sink.received == content_length > size
    assert b"transfer-encoding" not in sink.headers
    assert peak < 5 * MB, f"peak {peak / MB:.1f} MiB"
