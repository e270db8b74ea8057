"""The HTTP seam: aiohttp over HTTP/1.1 to the emulator on a real socket, splicing, closing."""

from __future__ import annotations

import asyncio
import gc
import math
import ssl
import time
import warnings
from collections import Counter
from email.utils import formatdate
from pathlib import Path
from typing import Any

import certifi
import httpx
import orjson
import pytest

from patchbay.emulators.fcm import Fault, FcmEmulator
from patchbay.emulators.serve import serve_in_thread
from patchbay.push import InvalidMessage, Message, Notification, Sender, connect
from patchbay.push.client import _splice
from patchbay.push.messages import check_token
from patchbay.push.transport import (
    AiohttpTransport,
    HttpxTransport,
    TransportFailure,
    make_transport,
    tls_context,
)
from patchbay.settings import PushSettings
from tests.unit.push.conftest import PROJECT, settings

ALERT = Message(notification=Notification(title="Hi"))


def http11(account_file: Path, served: str, **changes: Any) -> PushSettings:
    """Settings for HTTP/1.1 (the aiohttp transport) to the served emulator."""
    return settings(
        service_account=str(account_file), fcm_url=served, iid_url=served, http2=False, **changes
    )


class Sleeps:
    """A sleep that records what the sender asked for and waits only a moment."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        """Record ``seconds``; yield briefly."""
        self.asked.append(seconds)
        await asyncio.sleep(0.001)


# -- which transport -----------------------------------------------------------------------------


def test_the_setting_chooses_the_transport() -> None:
    """http2=false gets aiohttp, http2=true httpx shards, an httpx transport one httpx client."""
    assert isinstance(make_transport(settings(http2=False)), AiohttpTransport)
    shards = make_transport(settings(http2=True, concurrency=250))
    assert isinstance(shards, HttpxTransport) and len(shards.clients) == 3
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    over = make_transport(settings(http2=False), mock)
    assert isinstance(over, HttpxTransport) and len(over.clients) == 1


# -- aiohttp against the emulator on a socket -------------------------------------------------


async def test_sends_over_http11_within_the_concurrency(
    live_emulator: FcmEmulator, served: str, account_file: Path
) -> None:
    """Every token sent once over HTTP/1.1, never more requests in flight than configured."""
    live_emulator.set_token_state("gone", "unregistered")
    push = http11(account_file, served, concurrency=7)
    tokens = [f"t{i}" for i in range(300)] + ["gone"]
    async with Sender.from_settings(push) as sender:
        assert isinstance(sender.transport, AiohttpTransport)
        results = [r async for r in sender.send_multicast(ALERT, tokens)]
        # Topic management too: a POST with a body and a DELETE without one.
        assert (await sender.subscribe("news", ["t1", "t2"])).succeeded == 2
        assert (await sender.unsubscribe("news", ["t1"])).succeeded == 1
    assert live_emulator.topics["news"] == {"t2"}
    assert Counter(r.outcome for r in results) == {"sent": 300, "dead_token": 1}
    assert sorted(a.target for a in live_emulator.ledger) == sorted(tokens[:-1])
    assert set(sender.stats.http_versions) == {"HTTP/1.1"}
    assert live_emulator.max_in_flight == 7  # reached (20 ms answers overlap) and never passed
    assert live_emulator.token_requests == 1  # the token request went through the same transport


async def test_retry_after_read_from_the_answer(
    live_emulator: FcmEmulator, served: str, account_file: Path
) -> None:
    """Retry-After in seconds and as an HTTP date (read against the server's Date) is honoured."""
    when = formatdate(math.ceil(time.time()) + 30, usegmt=True)
    live_emulator.script(
        "t", [Fault.status(503, retry_after=7), Fault.status(429, retry_after=when)]
    )
    sleeps = Sleeps()
    async with Sender.from_settings(http11(account_file, served), sleep=sleeps) as sender:
        result = await sender.send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts, result.http_status) == ("sent", 3, 200)
    assert len(sleeps.asked) == 2
    assert sleeps.asked[0] >= 7
    assert sleeps.asked[1] >= 28  # hypercorn's Date has one-second resolution, as the header


@pytest.mark.parametrize("fault", [Fault.drop_before(), Fault.drop_after()])
async def test_a_dropped_connection_is_retried(
    live_emulator: FcmEmulator, served: str, account_file: Path, fault: Fault
) -> None:
    """The server hanging up mid-request is a transport error: retried on a new connection."""
    live_emulator.script("t", [fault])
    async with Sender.from_settings(http11(account_file, served), sleep=Sleeps()) as sender:
        result = await sender.send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts) == ("sent", 2)
    # Dropped after storing: the retry duplicates it (FCM has no idempotency key).
    assert len(live_emulator.sent_to("t")) == (2 if fault.kind == "drop_after" else 1)


async def test_connections_dropped_every_time_fail_with_the_reason(
    live_emulator: FcmEmulator, served: str, account_file: Path
) -> None:
    """When every attempt is dropped the result is failed, TRANSPORT, naming aiohttp's error."""
    live_emulator.script("t", [Fault.drop_before()] * 3)
    push = http11(account_file, served, max_attempts=3)
    async with Sender.from_settings(push, sleep=Sleeps()) as sender:
        result = await sender.send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts, result.error_code) == ("failed", 3, "TRANSPORT")
    assert "ServerDisconnectedError" in result.detail
    assert live_emulator.sent_to("t") == []


async def test_a_slow_answer_times_out_and_is_retried(
    live_emulator: FcmEmulator, served: str, account_file: Path
) -> None:
    """An answer later than push.timeout is abandoned and the message sent again."""
    live_emulator.script("t", [Fault.slow(1.5)])
    push = http11(account_file, served, timeout=0.3)
    async with Sender.from_settings(push, sleep=Sleeps()) as sender:
        started = time.monotonic()
        result = await sender.send(ALERT.to(token="t"))
        took = time.monotonic() - started
    assert (result.outcome, result.attempts) == ("sent", 2)
    assert took < 1.2  # did not wait for the slow answer
    # The slow request's handler still stored it when it woke: the retry duplicated it.
    await asyncio.sleep(1.5)
    assert len(live_emulator.sent_to("t")) == 2


async def test_timeouts_every_time_fail_naming_the_timeout(
    live_emulator: FcmEmulator, served: str, account_file: Path
) -> None:
    """Timed out on every attempt: failed, TRANSPORT, the detail says it timed out."""
    live_emulator.script("t", [Fault.slow(2.0)] * 2)
    push = http11(account_file, served, timeout=0.3, max_attempts=2)
    async with Sender.from_settings(push, sleep=Sleeps()) as sender:
        result = await sender.send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts, result.error_code) == ("failed", 2, "TRANSPORT")
    assert "Timeout" in result.detail, result.detail


async def test_nothing_listening_is_a_transport_failure() -> None:
    """A refused connection raises TransportFailure with aiohttp's reason."""
    with serve_in_thread(FcmEmulator(project_id=PROJECT)) as url:
        pass  # now nothing listens on that port
    transport = AiohttpTransport(connections=2, timeout=2.0)
    try:
        with pytest.raises(TransportFailure, match="ClientConnectorError"):
            await transport.request("POST", f"{url}/x", b"{}", {}, 2.0)
    finally:
        await transport.aclose()


def test_tls_trusts_what_httpx_trusts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP/1.1 transport trusts certifi's bundle, or SSL_CERT_FILE when set, as httpx does."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    bundle = certifi.contents()
    httpx_default = ssl.create_default_context(cafile=certifi.where())
    assert tls_context().cert_store_stats() == httpx_default.cert_store_stats()
    one = tmp_path / "one-ca.pem"
    end = "-----END CERTIFICATE-----\n"
    one.write_text(
        bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)]
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(one))
    context = tls_context()
    assert context.cert_store_stats()["x509_ca"] == 1
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


# -- closing -------------------------------------------------------------------------------------


async def test_close_leaves_nothing_open(served: str, account_file: Path) -> None:
    """Sender.aclose closes the session: no unclosed-session warning when collected; no reuse."""
    sender = Sender.from_settings(http11(account_file, served))
    assert (await sender.send(ALERT.to(token="t"))).ok
    transport = sender.transport
    assert isinstance(transport, AiohttpTransport)
    await sender.aclose()
    await sender.aclose()  # idempotent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del sender
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    with pytest.raises(RuntimeError, match="closed"):
        await transport.request("POST", f"{served}/x", b"{}", {}, 1.0)


async def test_a_transport_of_the_caller_is_left_open(
    live_emulator: FcmEmulator, served: str, account_file: Path
) -> None:
    """Sender(http=transport) uses it and leaves closing it to the caller."""
    push = http11(account_file, served)
    transport = AiohttpTransport(connections=4, timeout=5.0)
    try:
        async with Sender.from_settings(push, http=transport) as sender:
            assert sender.transport is transport
            assert (await sender.send(ALERT.to(token="a"))).ok
        async with Sender.from_settings(push, http=transport) as again:
            assert (await again.send(ALERT.to(token="b"))).ok
    finally:
        await transport.aclose()
    assert {a.target for a in live_emulator.ledger} == {"a", "b"}


def test_blocking_sender_over_http11(
    live_emulator: FcmEmulator, served: str, account_file: Path
) -> None:
    """connect(http2=False): the aiohttp session lives on the sender's loop thread and closes."""
    with connect(account_file, fcm_url=served, iid_url=served, http2=False) as fcm:
        results = list(fcm.send_multicast(ALERT, [f"t{i}" for i in range(50)]))
        transport = fcm.sender.transport
    assert Counter(r.outcome for r in results) == {"sent": 50}
    assert isinstance(transport, AiohttpTransport) and transport._session is None
    assert set(fcm.sender.stats.http_versions) == {"HTTP/1.1"}


# -- per-message work ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["token", "fid"])
@pytest.mark.parametrize("validate_only", [False, True])
@pytest.mark.parametrize(
    "template",
    [
        Message(),
        Message(data={"k": "v"}),
        Message(notification=Notification(title='"quoted" é \u2028'), priority="high"),
    ],
)
def test_spliced_body_equals_the_serialized_one(
    template: Message, kind: str, validate_only: bool
) -> None:
    """The multicast body spliced around a token is byte for byte the whole JSON serialized."""
    head, tail = _splice(template.body(), kind, validate_only)
    for token in ("abc:APA91b", 'we"ird\\token'):
        whole = {"message": {kind: token, **template.body()}, "validate_only": validate_only}
        assert head + orjson.dumps(token) + tail == orjson.dumps(whole)


def test_tokens_with_whitespace_or_control_characters_are_refused() -> None:
    """Every whitespace and non-printable character is refused inside a token, no other."""
    refused = set()
    every = range(0x3100)  # past U+3000, the last whitespace character
    for char in map(chr, every):
        try:
            check_token("message.token", f"abc{char}def")
        except InvalidMessage:
            refused.add(char)
    assert refused
    assert refused == {c for c in map(chr, every) if c.isspace() or not c.isprintable()}
