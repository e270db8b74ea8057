"""Zoho CRM end to end: the server subscribes its channel at start, then takes its notifications."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from patchbay.emulators.zoho import ZohoEmulator
from tests.conftest import Start, free_port

TOKEN = "zoho-channel-token"
CHANNEL = "1000000068001"


@pytest.fixture
def zoho() -> Iterator[tuple[ZohoEmulator, str]]:
    """The Zoho emulator served on a loopback port."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    emulator = ZohoEmulator(api_domain=base)
    server = uvicorn.Server(
        uvicorn.Config(emulator, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield emulator, base
    server.should_exit = True
    thread.join(5)


def test_channel_is_subscribed_and_notifications_reach_handlers(
    serve: Start, tmp_path: Path, zoho: tuple[ZohoEmulator, str]
) -> None:
    """Start subscribes the channel with an expiry; a notification runs the handler; a forged one is refused."""
    emulator, base = zoho
    (tmp_path / "zoho_handlers.py").write_text(
        textwrap.dedent(
            """
            import json, pathlib
            from patchbay.webhooks import Context, Router

            router = Router()

            @router.on("Leads.*")
            def lead(ctx: Context) -> None:
                line = {"event": ctx.event, "ids": ctx.payload["ids"]}
                with (pathlib.Path(__file__).parent / "leads.jsonl").open("a") as out:
                    out.write(json.dumps(line) + "\\n")
            """
        )
    )
    port = free_port()
    config = tmp_path / "patchbay.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [crm]
            client_id = "{emulator.client_id}"
            client_secret = "{emulator.client_secret}"
            refresh_token = "{emulator.refresh_token}"
            accounts_url = "{base}"
            api_url = "{base}"

            [webhooks.sources.crm]
            provider = "zoho"
            secrets = ["{TOKEN}"]
            handlers = "zoho_handlers:router"
            channel_id = "{CHANNEL}"
            events = ["Leads.all"]
            notify_url = "http://127.0.0.1:{port}/hooks/crm"
            channel_lifetime = 3600
            """
        )
    )
    server = serve(["--config", str(config)], port=port)
    deadline = time.monotonic() + 10
    while emulator.channel(CHANNEL) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    channel = emulator.channel(CHANNEL)
    assert channel is not None, f"the channel was not subscribed: {server.log.read_text()}"
    assert channel.expires_at > time.time() + 3000

    async def notify() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient() as http:
            good = await emulator.notify(
                http, CHANNEL, ids=["4150868000000224005"], operation="insert"
            )
            forged = emulator.notification(CHANNEL, ids=["1"], operation="insert")
            forged["token"] = "guess"
            bad = await http.post(f"http://127.0.0.1:{port}/hooks/crm", json=forged)
            return good, bad

    good, bad = asyncio.run(notify())
    assert good.status_code == 200, f"{good.text} {server.log.read_text()}"
    assert bad.status_code == 401
    assert bad.json()["error"]["detail"]["reason"] == "bad_token"
    leads = tmp_path / "leads.jsonl"
    deadline = time.monotonic() + 10
    # The handler opens the file before it writes its line: wait for the whole line.
    while not (leads.exists() and leads.read_text().endswith("\n")):
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    assert [json.loads(x) for x in leads.read_text().splitlines()] == [
        {"event": "Leads.insert", "ids": ["4150868000000224005"]}
    ]
