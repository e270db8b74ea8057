"""The sender over real sockets: h2c to the emulator under hypercorn, shards, HTTP/1.1.

More of HTTP/1.1 (the aiohttp transport: faults, timeouts, closing) is in test_transport.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from patchbay.emulators.fcm import FcmEmulator
from patchbay.push import Message, Notification, Sender
from tests.unit.push.conftest import settings

ALERT = Message(notification=Notification(title="Hi"))


@pytest.mark.parametrize(("http2", "version"), [(True, "HTTP/2"), (False, "HTTP/1.1")])
async def test_protocol_follows_the_setting(
    live_emulator: FcmEmulator, served: str, account_file: Path, http2: bool, version: str
) -> None:
    """http2=true speaks h2c with prior knowledge to an http:// base; false speaks HTTP/1.1."""
    push = settings(service_account=str(account_file), fcm_url=served, iid_url=served, http2=http2)
    async with Sender.from_settings(push) as sender:
        results = [r async for r in sender.send_multicast(ALERT, [f"t{i}" for i in range(200)])]
        report = await sender.subscribe("news", ["t1", "t2"])
    assert Counter(r.outcome for r in results) == {"sent": 200}
    assert report.succeeded == 2
    assert set(sender.stats.http_versions) == {version}
    assert 10 < live_emulator.max_in_flight <= push.concurrency


async def test_more_than_100_in_flight_uses_several_connections(
    live_emulator: FcmEmulator, served: str, account_file: Path
) -> None:
    """One HTTP/2 connection carries 100 streams; concurrency 250 shards over three."""
    live_emulator.latency = 0.2  # long enough for the client to fill every stream it has
    push = settings(
        service_account=str(account_file),
        fcm_url=served,
        iid_url=served,
        concurrency=250,
        http2=True,
    )
    async with Sender.from_settings(push) as sender:
        results = [r async for r in sender.send_multicast(ALERT, [f"t{i}" for i in range(750)])]
    assert Counter(r.outcome for r in results) == {"sent": 750}
    assert 100 < live_emulator.max_in_flight <= 250
    assert live_emulator.token_requests == 1
