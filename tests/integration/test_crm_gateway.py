"""The CRM endpoints end to end against the Zoho emulator: stored uploads, the legacy form, kills."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from patchbay.emulators.serve import serve_in_thread
from patchbay.emulators.zoho import Fault, ZohoEmulator
from tests.conftest import Start, free_port

RECORD = "4150868000000224005"
LEGACY = "old-authtoken-123"


@pytest.fixture
def zoho(tmp_path: Path) -> Iterator[tuple[ZohoEmulator, Path]]:
    """The Zoho emulator on a loopback port, and settings pointing [crm] at it."""
    port = free_port()
    emulator = ZohoEmulator(api_domain=f"http://127.0.0.1:{port}")
    with serve_in_thread(emulator, port=port) as url:
        config = tmp_path / "patchbay.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [server]
                state_dir = "{tmp_path / "var"}"

                [jobs]
                poll_interval = 0.1
                lease = 2

                [crm]
                client_id = "{emulator.client_id}"
                client_secret = "{emulator.client_secret}"
                refresh_token = "{emulator.refresh_token}"
                accounts_url = "{url}"
                api_url = "{url}"
                legacy_token = "{LEGACY}"
                legacy_wait = 10
                """
            )
        )
        yield emulator, config


def wait_done(url: str, ident: int, seconds: float = 30) -> dict[str, Any]:
    """Poll ``GET /v1/crm/uploads/{id}`` until the upload has ended."""
    deadline = time.monotonic() + seconds
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/v1/crm/uploads/{ident}").json()
        if state["state"] != "pending":
            return state
        time.sleep(0.1)
    raise AssertionError(f"upload {ident} not done: {state}")


def test_upload_and_link_through_the_gateway(
    serve: Start, zoho: tuple[ZohoEmulator, Path], tmp_path: Path
) -> None:
    """A file and a link are stored, uploaded once each, and their state reports the attachment."""
    emulator, config = zoho
    server = serve(["--config", str(config)])
    content = os.urandom(300_000)
    answer = httpx.post(
        f"{server.url}/v1/crm/Leads/{RECORD}/attachments",
        files={"file": ("report.pdf", content, "application/pdf")},
    )
    assert answer.status_code == 202, answer.text
    state = wait_done(server.url, answer.json()["id"])
    assert state["state"] == "done", state
    [stored] = emulator.stored("Leads", RECORD)
    assert (stored.file_name, stored.size) == ("report.pdf", len(content))
    assert stored.sha256 == hashlib.sha256(content).hexdigest()
    assert state["attachment"]["id"] == stored.id
    assert not list((tmp_path / "var" / "uploads").iterdir())  # the file went with the job

    link = httpx.post(
        f"{server.url}/v1/crm/Leads/{RECORD}/attachments",
        json={"url": "https://example.com/spec.pdf", "title": "Spec"},
    )
    assert wait_done(server.url, link.json()["id"])["state"] == "done"
    assert len(emulator.stored("Leads", RECORD)) == 2


def test_refusals_before_any_call(serve: Start, zoho: tuple[ZohoEmulator, Path]) -> None:
    """A module that takes no attachments, both or neither of file and link: 400, nothing sent."""
    emulator, config = zoho
    server = serve(["--config", str(config)])
    base = f"{server.url}/v1/crm"
    reports = httpx.post(f"{base}/Reports/{RECORD}/attachments", files={"file": ("a", b"x")})
    assert reports.status_code == 400
    both = httpx.post(
        f"{base}/Leads/{RECORD}/attachments",
        files={"file": ("a", b"x")},
        data={"attachmentUrl": "https://example.com/a"},
    )
    assert both.status_code == 400
    assert httpx.post(f"{base}/Leads/{RECORD}/attachments", json={}).status_code == 400
    assert httpx.get(f"{base}/Leads/{RECORD}/attachments").status_code == 405
    assert not emulator.uploads


def test_legacy_upload_file_form(serve: Start, zoho: tuple[ZohoEmulator, Path]) -> None:
    """The seed's uploadFile works with the legacy token and is refused without it."""
    emulator, config = zoho
    server = serve(["--config", str(config)])
    url = f"{server.url}/crm/private/json/Leads/uploadFile"
    params = {"authtoken": LEGACY, "scope": "crmapi", "id": RECORD}
    answer = httpx.post(url, params=params, files={"content": ("old.txt", b"legacy bytes")})
    assert answer.status_code == 200, answer.text
    result = answer.json()["response"]["result"]
    assert result["message"] == "File has been attached successfully"
    fields = {f["val"]: f["content"] for f in result["recorddetail"]["FL"]}
    assert fields["Id"] == emulator.stored("Leads", RECORD)[0].id
    xml = httpx.post(
        url.replace("/json/", "/xml/"), params=params, files={"content": ("x.txt", b"x")}
    )
    assert xml.status_code == 200
    assert b"<message>File has been attached successfully</message>" in xml.content
    refused = httpx.post(
        url, params={**params, "authtoken": "guess"}, files={"content": ("a", b"x")}
    )
    assert refused.status_code == 401
    assert refused.json()["response"]["error"]["code"] == "4834"
    assert len(emulator.stored("Leads", RECORD)) == 2


def test_kill_nine_during_uploads_each_lands_once(
    tmp_path: Path, zoho: tuple[ZohoEmulator, Path]
) -> None:
    """Uploads accepted before kill -9, one of them stored by Zoho as its connection dropped: once each."""
    emulator, config = zoho
    emulator.inject(Fault.drop_after(), None, Fault.slow(1.0), method="POST")
    port = free_port()
    command = [sys.executable, "-m", "patchbay", "serve", "--config", str(config), "-p", str(port)]
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("the server did not start")

    first = start()
    ids = []
    for n in range(6):
        answer = httpx.post(
            f"{url}/v1/crm/Leads/{RECORD}/attachments",
            files={"file": (f"f{n}.bin", os.urandom(10_000 + n))},
        )
        assert answer.status_code == 202
        ids.append(answer.json()["id"])
    time.sleep(0.5)  # some uploads under way, one stored with its answer lost
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    second = start()
    try:
        states = [wait_done(url, ident, seconds=60) for ident in ids]
    finally:
        second.terminate()
        second.wait(15)
    assert [s["state"] for s in states] == ["done"] * 6
    assert any(call.status == 0 for call in emulator.calls), "no connection was dropped"
    names = sorted(a.file_name for a in emulator.stored("Leads", RECORD))
    assert names == [f"f{n}.bin" for n in range(6)]
