"""The emulator is faithful: Zoho's own SDK (zohocrmsdk8-0) uploads to it, and faults reach it as Zoho's codes.

The SDK is pointed at the emulator with a custom ``DataCenter.Environment`` (API URL, accounts
token URL, file-upload URL); its token store is a ``FileStore`` and its resource path a
temporary directory, so it writes nothing elsewhere. The emulator is served over real sockets,
by uvicorn and by hypercorn, so that dropped connections are dropped sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import requests
import uvicorn
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.typing import Framework
from zohocrmsdk.src.com.zoho.api.authenticator.oauth_token import (  # type: ignore[import-untyped]
    OAuthToken,
)
from zohocrmsdk.src.com.zoho.api.authenticator.store.file_store import (  # type: ignore[import-untyped]
    FileStore,
)
from zohocrmsdk.src.com.zoho.crm.api import ParameterMap  # type: ignore[import-untyped]
from zohocrmsdk.src.com.zoho.crm.api.attachments import (  # type: ignore[import-untyped]
    ActionWrapper,
    APIException,
    AttachmentsOperations,
    FileBodyWrapper,
    GetAttachmentsParam,
    ResponseWrapper,
    SuccessResponse,
    UploadUrlAttachmentsParam,
)
from zohocrmsdk.src.com.zoho.crm.api.dc.data_center import (  # type: ignore[import-untyped]
    DataCenter,
)
from zohocrmsdk.src.com.zoho.crm.api.exception import SDKException  # type: ignore[import-untyped]
from zohocrmsdk.src.com.zoho.crm.api.initializer import (  # type: ignore[import-untyped]
    Initializer,
)
from zohocrmsdk.src.com.zoho.crm.api.sdk_config import SDKConfig  # type: ignore[import-untyped]
from zohocrmsdk.src.com.zoho.crm.api.util import StreamWrapper  # type: ignore[import-untyped]

from patchbay.emulators.zoho import Fault, ZohoEmulator
from tests.conftest import free_port

RECORD = 5725767000000123001


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def served(emulator: ZohoEmulator, server: str, port: int) -> Iterator[None]:
    """``emulator`` served on ``port`` by uvicorn or hypercorn, in a thread."""
    if server == "uvicorn":
        config = uvicorn.Config(
            emulator, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        uvicorn_server = uvicorn.Server(config)
        thread = threading.Thread(target=uvicorn_server.run, daemon=True)
        thread.start()
        _wait_for(port)
        yield
        uvicorn_server.should_exit = True
        thread.join(10)
        return
    settings = Config()
    settings.bind = [f"127.0.0.1:{port}"]
    settings.loglevel = "WARNING"
    app = cast(Framework, emulator)  # hypercorn's protocol types are stricter than ASGI's
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        stop = asyncio.Event()
        running.append((asyncio.get_running_loop(), stop))
        await serve(app, settings, shutdown_trigger=stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    _wait_for(port)
    yield
    loop, stop = running[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


@pytest.fixture(params=["uvicorn", "hypercorn"])
def zoho(request: pytest.FixtureRequest) -> Iterator[tuple[ZohoEmulator, str]]:
    """The emulator on a loopback port, served by each server in turn; its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    emulator = ZohoEmulator(api_domain=base)
    with served(emulator, str(request.param), port):
        yield emulator, base


@pytest.fixture
def sdk(zoho: tuple[ZohoEmulator, str], tmp_path: Path) -> Iterator[Any]:
    """The official SDK, initialised against the emulator: its attachments operations."""
    emulator, base = zoho
    # The SDK's own data centers are fixed URLs; an Environment takes any.
    environment = DataCenter.Environment(base, f"{base}/oauth/v2/token", base)
    token = OAuthToken(
        client_id=emulator.client_id,
        client_secret=emulator.client_secret,
        refresh_token=emulator.refresh_token,
        # Else it looks its user up with /crm/v8/users, which the emulator does not serve.
        find_user=False,
    )
    Initializer.initialize(
        environment=environment,
        token=token,
        store=FileStore(str(tmp_path / "sdk_tokens.csv")),
        sdk_config=SDKConfig(
            auto_refresh_fields=False, pick_list_validation=False, read_timeout=5.0
        ),
        resource_path=str(tmp_path),
    )
    yield AttachmentsOperations()
    Initializer.initializer = None  # the SDK keeps its setup in a class attribute


def upload(operations: Any, path: Path, module: str = "Leads", record: int = RECORD) -> Any:
    """Upload ``path`` with the SDK, as its documentation shows; its APIResponse."""
    with path.open("rb") as stream:
        body = FileBodyWrapper()
        body.set_file(StreamWrapper(name=path.name, stream=stream))
        return operations.upload_attachments(record, module, body)


def a_file(tmp_path: Path, size: int = 3000, name: str = "report.pdf") -> Path:
    """A file of ``size`` random bytes."""
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_sdk_uploads_lists_downloads_and_deletes(
    zoho: tuple[ZohoEmulator, str], sdk: Any, tmp_path: Path
) -> None:
    """The SDK's upload, list, download, link and delete all work and parse as against Zoho."""
    emulator, _ = zoho
    path = a_file(tmp_path)
    response = upload(sdk, path)
    assert response.get_status_code() == 200
    assert isinstance(response.get_object(), ActionWrapper)
    (result,) = response.get_object().get_data()
    assert isinstance(result, SuccessResponse)
    assert (result.get_code().get_value(), result.get_status().get_value()) == (
        "SUCCESS",
        "success",
    )
    attachment_id = result.get_details()["id"]
    (stored,) = emulator.uploads
    assert (str(attachment_id), stored.record_id, stored.file_name, stored.size) == (
        stored.id,
        str(RECORD),
        "report.pdf",
        3000,
    )
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    link = ParameterMap()
    link.add(UploadUrlAttachmentsParam.attachmenturl, "https://example.com/spec")
    link.add(UploadUrlAttachmentsParam.title, "Spec")
    linked = sdk.upload_url_attachments(RECORD, "Leads", link)
    assert linked.get_object().get_data()[0].get_code().get_value() == "SUCCESS"

    fields = ParameterMap()
    fields.add(GetAttachmentsParam.fields, "id,File_Name,Size,$type")
    listed = sdk.get_attachments(RECORD, "Leads", fields)
    assert isinstance(listed.get_object(), ResponseWrapper)
    entries = [(a.get_file_name(), a.get_size()) for a in listed.get_object().get_data()]
    assert entries == [("Spec", "0"), ("report.pdf", "3000")]
    assert listed.get_object().get_info().get_more_records() is False

    download = sdk.get_attachment(attachment_id, RECORD, "Leads")
    file = download.get_object().get_file()
    assert file.get_name() == "report.pdf"
    assert b"".join(file.get_stream()) == path.read_bytes()

    deleted = sdk.delete_attachment(attachment_id, RECORD, "Leads")
    assert deleted.get_object().get_data()[0].get_code().get_value() == "SUCCESS"
    assert [a.file_name for a in emulator.stored()] == ["Spec"]


def _expire_tokens(emulator: ZohoEmulator) -> None:
    for token in list(emulator.accounts.expiry):
        emulator.accounts.expire(token)


def _read_only(emulator: ZohoEmulator) -> None:
    grant = emulator.accounts.grants[emulator.refresh_token]
    grant.scopes = frozenset({"zohocrm.modules.attachments.read"})


# (what to change, what the SDK calls, the HTTP status and code it must see)
CASES: dict[str, tuple[Callable[[ZohoEmulator], object], str, int, str]] = {
    "module without attachments": (lambda e: None, "Reports", 400, "INVALID_MODULE"),
    "unknown record": (
        lambda e: setattr(e, "records", {"leads": {"1"}}),
        "Leads",
        400,
        "INVALID_DATA",
    ),
    "file too large": (
        lambda e: setattr(e, "max_upload_bytes", 2999),
        "Leads",
        413,
        "FILE_SIZE_MORE_THAN_ALLOWED_SIZE",
    ),
    "injected 429": (
        lambda e: e.inject(Fault.http(429)),
        "Leads",
        429,
        "TOO_MANY_REQUESTS",
    ),
    "injected 500": (lambda e: e.inject(Fault.http(500)), "Leads", 500, "INTERNAL_ERROR"),
    "injected 503": (
        lambda e: e.inject(Fault.http(503)),
        "Leads",
        503,
        "SERVICE_UNAVAILABLE",
    ),
    "expired token": (_expire_tokens, "Leads", 401, "INVALID_TOKEN"),
    "scope mismatch": (_read_only, "Leads", 401, "OAUTH_SCOPE_MISMATCH"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_errors_reach_the_sdk_as_zohos_codes(
    zoho: tuple[ZohoEmulator, str], sdk: Any, tmp_path: Path, case: str
) -> None:
    """Each refusal, natural or injected, is an APIException with Zoho's status and code."""
    emulator, _ = zoho
    change, module, status, code = CASES[case]
    change(emulator)
    response = upload(sdk, a_file(tmp_path), module=module)
    assert response.get_status_code() == status
    exception = response.get_object()
    assert isinstance(exception, APIException)
    assert (exception.get_code().get_value(), exception.get_status().get_value()) == (
        code,
        "error",
    )
    assert emulator.uploads == []


def test_the_upload_block_reaches_the_sdk_as_429(
    zoho: tuple[ZohoEmulator, str], sdk: Any, tmp_path: Path
) -> None:
    """Past the upload rule's limit the SDK gets 429 TOO_MANY_REQUESTS, and keeps getting it."""
    emulator, _ = zoho
    emulator.limits.upload_limit = 2
    statuses = [upload(sdk, a_file(tmp_path)).get_status_code() for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    assert emulator.blocked_count == 1 and len(emulator.uploads) == 2
    fields = ParameterMap()
    fields.add(GetAttachmentsParam.fields, "id")
    blocked = sdk.get_attachments(RECORD, "Leads", fields)
    assert blocked.get_object().get_code().get_value() == "TOO_MANY_REQUESTS"


def test_list_without_fields_is_refused_to_the_sdk(
    zoho: tuple[ZohoEmulator, str], sdk: Any
) -> None:
    """v8 wants ``fields``; the SDK does not check, so Zoho's REQUIRED_PARAM_MISSING reaches it."""
    response = sdk.get_attachments(RECORD, "Leads", None)
    assert response.get_status_code() == 400
    assert response.get_object().get_code().get_value() == "REQUIRED_PARAM_MISSING"


def test_dropped_connections_reach_the_sdk_as_connection_errors(
    zoho: tuple[ZohoEmulator, str], sdk: Any, tmp_path: Path
) -> None:
    """Both drops leave the SDK with a connection error; only drop_after stored the file."""
    emulator, _ = zoho
    emulator.inject(Fault.drop_before(), Fault.drop_after())
    for name in ("before.pdf", "after.pdf"):
        with pytest.raises(SDKException) as caught:
            upload(sdk, a_file(tmp_path, name=name))
        assert isinstance(caught.value.cause, requests.ConnectionError)
    assert [u.file_name for u in emulator.uploads] == ["after.pdf"]
    assert (upload(sdk, a_file(tmp_path))).get_status_code() == 200
    statuses = [c.status for c in emulator.calls if c.method == "POST" and "Attach" in c.path]
    assert statuses == [0, 0, 200]


def test_slow_answers_reach_the_sdk_as_timeouts(
    zoho: tuple[ZohoEmulator, str], tmp_path: Path, sdk: Any
) -> None:
    """The SDK times out only GETs: a slow list ends in a read timeout."""
    emulator, _ = zoho
    Initializer.get_initializer().sdk_config = SDKConfig(read_timeout=0.3)
    emulator.inject(Fault.slow(1.0), method="GET")
    fields = ParameterMap()
    fields.add(GetAttachmentsParam.fields, "id")
    with pytest.raises(SDKException) as caught:
        sdk.get_attachments(RECORD, "Leads", fields)
    assert isinstance(caught.value.cause, requests.ReadTimeout)


async def test_drops_are_socket_drops(zoho: tuple[ZohoEmulator, str]) -> None:
    """Over a socket a drop is a closed connection with no answer at all, for any client."""
    emulator, base = zoho
    async with httpx.AsyncClient(base_url=base) as http:
        token = (
            await http.post(
                "/oauth/v2/token",
                data={
                    "grant_type": "refresh_token",
                    "client_id": emulator.client_id,
                    "client_secret": emulator.client_secret,
                    "refresh_token": emulator.refresh_token,
                },
            )
        ).json()["access_token"]
        headers = {"authorization": f"Zoho-oauthtoken {token}"}
        emulator.inject(Fault.drop_after())
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.post(
                f"/crm/v8/Leads/{RECORD}/Attachments",
                files={"file": ("a.txt", b"abc")},
                headers=headers,
            )
        assert len(emulator.uploads) == 1
        listed = await http.get(
            f"/crm/v8/Leads/{RECORD}/Attachments", params={"fields": "id"}, headers=headers
        )
        assert [e["id"] for e in listed.json()["data"]] == [emulator.uploads[0].id]
