"""The FCM emulator served for real: HTTP/2 without TLS, HTTP/1.1, dropped connections, the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import httpx
import pytest
from google.oauth2 import service_account as google_service_account

from patchbay.emulators.fcm import Fault, FcmEmulator
from patchbay.emulators.keys import service_account
from patchbay.emulators.serve import serve_in_thread

PROJECT = "demo-project"
SEND = f"/v1/projects/{PROJECT}/messages:send"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@dataclass
class Served:
    """An emulator, its URL and a service account whose token_uri is that URL."""

    emulator: FcmEmulator
    url: str
    account: dict[str, str]


@pytest.fixture
def served() -> Iterator[Served]:
    """The emulator on a loopback port, checking signatures against a fresh account."""
    account, public = service_account("http://placeholder/token", PROJECT)
    emulator = FcmEmulator(project_id=PROJECT, public_keys={account["private_key_id"]: public})
    with serve_in_thread(emulator) as url:
        account["token_uri"] = f"{url}/token"  # known once serving; the key does not change
        yield Served(emulator, url, account)


def access_token(account: dict[str, str]) -> str:
    """A token from the account's token_uri, through google-auth (as firebase-admin gets it)."""
    # google-auth's constructors are not annotated.
    credentials = google_service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        account, scopes=[FCM_SCOPE]
    )
    with requests_session() as request:
        credentials.refresh(request)
    token = credentials.token
    assert isinstance(token, str)
    return token


@contextmanager
def requests_session() -> Iterator[google.auth.transport.requests.Request]:
    """google-auth's requests transport on a session that is closed afterwards."""
    import requests

    with requests.Session() as session:
        yield google.auth.transport.requests.Request(session)


@pytest.fixture
async def h2c(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP/2 client with prior knowledge (no TLS, no Upgrade), authorized."""
    headers = {"authorization": f"Bearer {await asyncio.to_thread(access_token, served.account)}"}
    async with httpx.AsyncClient(
        base_url=served.url, http1=False, http2=True, headers=headers, timeout=10
    ) as client:
        yield client


async def test_google_auth_gets_a_token_and_h2c_sends(
    served: Served, h2c: httpx.AsyncClient
) -> None:
    """google-auth's real JWT grant works against /token; a send goes over HTTP/2."""
    response = await h2c.post(SEND, json={"message": {"token": "a", "data": {"k": "v"}}})
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert served.emulator.token_requests == 1
    assert [a.target for a in served.emulator.ledger] == ["a"]


async def test_one_h2_connection_carries_at_most_100_streams(
    served: Served, h2c: httpx.AsyncClient
) -> None:
    """150 concurrent sends on one HTTP/2 connection: the server's 100-stream limit holds."""
    served.emulator.latency = 0.1  # long enough for every stream to be open at once
    bodies = [{"message": {"token": f"t{i}"}} for i in range(150)]
    responses = await asyncio.gather(*(h2c.post(SEND, json=b) for b in bodies))
    assert {r.status_code for r in responses} == {200}
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert 50 <= served.emulator.max_in_flight <= 100
    assert len(served.emulator.ledger) == 150


async def test_http11_clients_are_served_too(served: Served) -> None:
    """An httpx client with http2=True speaks HTTP/1.1 to an http:// URL, and that works too."""
    token = await asyncio.to_thread(access_token, served.account)
    async with httpx.AsyncClient(base_url=served.url, http2=True, timeout=10) as client:
        response = await client.post(
            SEND,
            json={"message": {"topic": "news"}},
            headers={"authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"


@pytest.mark.parametrize("http1", [True, False], ids=["http1.1", "h2c"])
async def test_dropped_connections(served: Served, http1: bool) -> None:
    """drop_before/drop_after close the connection unanswered; the client reconnects after."""
    token = await asyncio.to_thread(access_token, served.account)
    served.emulator.script("tok", [Fault.drop_before(), Fault.drop_after()])
    async with httpx.AsyncClient(
        base_url=served.url,
        http1=http1,
        http2=True,
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    ) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
            await client.post(SEND, json={"message": {"token": "tok"}})
        assert served.emulator.ledger == []
        with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
            await client.post(SEND, json={"message": {"token": "tok"}})
        assert [a.target for a in served.emulator.ledger] == ["tok"]
        response = await client.post(SEND, json={"message": {"token": "tok"}})
        assert response.status_code == 200
    assert len(served.emulator.sent_to("tok")) == 2  # the duplicate a retry after a drop makes
    assert served.emulator.in_flight == 0


async def test_h2_drop_ends_every_stream_on_the_connection(
    served: Served, h2c: httpx.AsyncClient
) -> None:
    """Under HTTP/2 a drop kills the connection: its other requests fail but are still stored."""
    # As at a real server, the handlers do not know their client is gone: they finish, and
    # store the messages whose clients saw an error (a retry would duplicate them).
    for i in range(5):
        served.emulator.script(f"o{i}", [Fault.slow(0.5)])
    others = [h2c.post(SEND, json={"message": {"token": f"o{i}"}}) for i in range(5)]

    async def victim() -> httpx.Response:
        await asyncio.sleep(0.2)  # the others are on the connection, waiting
        served.emulator.script("victim", [Fault.drop_before()])
        return await h2c.post(SEND, json={"message": {"token": "victim"}})

    results = await asyncio.gather(*others, victim(), return_exceptions=True)
    assert all(isinstance(r, httpx.RemoteProtocolError) for r in results), results
    await asyncio.sleep(0.6)
    assert sorted(a.target for a in served.emulator.ledger) == [f"o{i}" for i in range(5)]
    response = await h2c.post(SEND, json={"message": {"token": "after"}})
    assert response.status_code == 200  # httpx opened a new connection


# -- the command -------------------------------------------------------------------------------


@contextmanager
def command(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``patchbay emulate ARGS`` (through the click group) until the block ends.

    Yields the process and its banner line; the process gets SIGTERM and must exit cleanly.
    """
    code = "import sys; from patchbay.emulators.commands import emulate; emulate(sys.argv[1:])"
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            if not banner:
                assert process.stderr is not None
                pytest.fail(f"the emulator did not start: {process.stderr.read()}")
            yield process, banner
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def url_of(banner: str) -> str:
    """The URL a banner announces."""
    return next(word for word in banner.split() if word.startswith("http://"))


def test_emulate_fcm_writes_a_working_service_account(tmp_path: Path) -> None:
    """--write-service-account makes a JSON google-auth uses as is; sends then succeed."""
    account_file = tmp_path / "sa.json"
    with command(
        "fcm", "-p", "0", "--write-service-account", str(account_file), "--project", "p1"
    ) as (_, banner):
        url = url_of(banner)
        assert banner.startswith(f"FCM emulator on {url} ")
        account = json.loads(account_file.read_text())
        assert account["token_uri"] == f"{url}/token"
        assert account["project_id"] == "p1"
        assert account_file.stat().st_mode & 0o077 == 0  # a private key: owner-only
        token = access_token(account)
        with httpx.Client(base_url=url, timeout=10) as client:
            response = client.post(
                "/v1/projects/p1/messages:send",
                json={"message": {"token": "dead-1"}},
                headers={"authorization": f"Bearer {token}"},
            )
        assert response.status_code == 200


def test_emulate_fcm_checks_the_given_service_account(tmp_path: Path) -> None:
    """With --service-account only that key's assertions get tokens; prefixes unregister."""
    mine, _ = service_account("http://unused/token", "p2")
    account_file = tmp_path / "sa.json"
    account_file.write_text(json.dumps(mine))
    with command(
        "fcm", "-p", "0", "--service-account", str(account_file), "--unregistered-prefix", "dead-"
    ) as (_, banner):
        url = url_of(banner)
        assert "project p2" in banner
        other, _ = service_account(f"{url}/token", "p2")
        with pytest.raises(google.auth.exceptions.RefreshError, match="Invalid JWT Signature"):
            access_token(other)
        token = access_token({**mine, "token_uri": f"{url}/token"})
        with httpx.Client(base_url=url, timeout=10) as client:
            response = client.post(
                "/v1/projects/p2/messages:send",
                json={"message": {"token": "dead-1"}},
                headers={"authorization": f"Bearer {token}"},
            )
        assert response.status_code == 404


def test_emulate_zoho_prints_its_client(tmp_path: Path) -> None:
    """The Zoho emulator prints the [crm] values, and its token endpoint takes them."""
    with command("zoho", "-p", "0") as (process, banner):
        url = url_of(banner)
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
        values: dict[str, Any] = {}
        for line in lines:
            key, _, value = line.partition(" = ")
            values[key] = json.loads(value)
        assert values["accounts_url"] == url
        with httpx.Client(base_url=url, timeout=10) as client:
            response = client.post(
                "/oauth/v2/token",
                data={
                    "grant_type": "refresh_token",
                    "client_id": values["client_id"],
                    "client_secret": values["client_secret"],
                    "refresh_token": values["refresh_token"],
                },
            )
        assert "access_token" in response.json()
