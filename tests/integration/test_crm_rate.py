"""200 uploads at once against Zoho's 60-a-minute rule (an emulated minute per real second)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from patchbay.crm.client import CrmClient
from patchbay.emulators.zoho import ScaledClock, ZohoEmulator
from patchbay.jobs.sqlite import SqliteStore
from patchbay.settings import CrmSettings

UPLOADS = 200
RECORD = "4150868000000224005"


async def test_two_hundred_uploads_never_trigger_the_block(tmp_path: Path) -> None:
    """No block, at least 55 calls an emulated minute sustained, every upload stored once."""
    clock = ScaledClock(60)
    emulator = ZohoEmulator(api_domain="http://zoho.test", clock=clock, limit_clock=clock)

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(clock.real(seconds))

    settings = CrmSettings(
        client_id=emulator.client_id,
        client_secret=emulator.client_secret,
        refresh_token=emulator.refresh_token,
        accounts_url="http://zoho.test",
        api_url="http://zoho.test",
        calls_per_minute=60,
        concurrency=10,
    )
    files = []
    for n in range(UPLOADS):
        path = tmp_path / f"file-{n}.txt"
        path.write_bytes(b"x" * (100 + n))
        files.append(path)
    store = SqliteStore(tmp_path / "jobs.db", clock=clock)
    await store.open()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator))
    try:
        async with CrmClient(settings, store=store, http=http, clock=clock, sleep=sleep) as client:
            began = clock()
            await asyncio.gather(*(client.upload("Leads", RECORD, path) for path in files))
            minutes = (clock() - began) / 60
    finally:
        await http.aclose()
        await store.close()
    assert emulator.blocked_count == 0
    names = sorted(a.file_name for a in emulator.stored("Leads", RECORD))
    assert names == sorted(path.name for path in files)
    rate = UPLOADS / minutes
    assert rate >= 55, f"{rate:.1f} uploads a minute"
    assert emulator.limits.max_uploads_within(60) <= 60
