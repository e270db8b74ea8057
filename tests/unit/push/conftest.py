"""Fixtures for the push sender: the FCM emulator in-process, a service account, virtual time."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from patchbay.emulators.fcm import FcmEmulator
from patchbay.emulators.keys import public_keys, service_account
from patchbay.emulators.serve import serve_in_thread
from patchbay.push.auth import ServiceAccountTokens
from patchbay.push.client import Sender
from patchbay.settings import PushSettings

BASE = "http://fcm.test"
PROJECT = "demo-project"


class VirtualTime:
    """A clock and a sleep for tests: sleeping moves the clock instead of waiting.

    ``sleep(d)`` moves the clock to at least ``now + d`` and yields once, so a task that slept
    ``d`` always wakes at least ``d`` later; concurrent sleepers share the jump (the clock is
    the max of their wake-up times, not their sum). Starts at the wall clock, so the emulator's
    checks of a JWT's ``iat`` (real time) still pass.
    """

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        """The current virtual time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance to ``now + seconds`` (if no one went further) and yield."""
        self.now = max(self.now, self.now + max(seconds, 0.0))
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``."""
        self.now += seconds


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request the sender made, as the recording transport saw it."""

    path: str
    target: str | None
    started: float
    status: int | None
    retry_after: str | None


class Recording(httpx.AsyncBaseTransport):
    """An ``ASGITransport`` to the emulator that logs every request with its virtual time."""

    def __init__(self, app: Any, clock: Callable[[], float]) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.clock = clock
        self.log: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward the request; record its target, start time and answer."""
        started = self.clock()
        target = None
        if request.url.path.endswith("messages:send"):
            message = orjson.loads(request.content).get("message", {})
            target = next((message[k] for k in ("token", "fid", "topic") if k in message), None)
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.log.append(Exchange(request.url.path, target, started, None, None))
            raise
        self.log.append(
            Exchange(
                request.url.path,
                target,
                started,
                response.status_code,
                response.headers.get("retry-after"),
            )
        )
        return response

    def by_target(self) -> dict[str, list[Exchange]]:
        """The send requests of each target, in order."""
        out: dict[str, list[Exchange]] = defaultdict(list)
        for exchange in self.log:
            if exchange.target is not None:
                out[exchange.target].append(exchange)
        return out


@pytest.fixture
def clock() -> VirtualTime:
    """Virtual time shared by the emulator and the sender."""
    return VirtualTime()


@pytest.fixture(scope="session")
def account() -> tuple[dict[str, str], dict[str, str]]:
    """A service account whose token_uri is the emulator's, and its public keys (one RSA key)."""
    info, _ = service_account(f"{BASE}/token", PROJECT)
    return info, public_keys(info)


@pytest.fixture
def emulator(account: tuple[dict[str, str], dict[str, str]], clock: VirtualTime) -> FcmEmulator:
    """A fresh emulated FCM that checks the account's signatures, on virtual time."""
    return FcmEmulator(project_id=PROJECT, public_keys=account[1], clock=clock)


@pytest.fixture
def recording(emulator: FcmEmulator, clock: VirtualTime) -> Recording:
    """The transport every test client uses: the emulator, with a request log."""
    return Recording(emulator, clock)


@pytest.fixture
async def http(recording: Recording) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose every request reaches the emulator."""
    async with httpx.AsyncClient(transport=recording) as client:
        yield client


def settings(**changes: Any) -> PushSettings:
    """Push settings pointing at the emulator (tests shrink what they need)."""
    values: dict[str, Any] = {
        "fcm_url": BASE,
        "iid_url": BASE,
        "project_id": PROJECT,
        "concurrency": 20,
        "max_attempts": 6,
        "quota_floor": 60.0,
    }
    values.update(changes)
    return PushSettings(**values)


SenderFactory = Callable[..., Sender]


@pytest.fixture
def make_sender(
    account: tuple[dict[str, str], dict[str, str]],
    http: httpx.AsyncClient,
    clock: VirtualTime,
) -> SenderFactory:
    """Build a sender on the emulator: real service-account tokens, virtual time."""

    def make(push: PushSettings | None = None, **kwargs: Any) -> Sender:
        push = push or settings()
        tokens = kwargs.pop("tokens", None) or ServiceAccountTokens.from_info(
            account[0], http, clock=clock
        )
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("http", http)
        return Sender(push, tokens, **kwargs)

    return make


# -- the emulator on a real socket (real time): for the transports' own tests


@pytest.fixture
def live_emulator(account: tuple[dict[str, str], dict[str, str]]) -> FcmEmulator:
    """An emulated FCM on real time that answers after 20 ms, so that requests overlap."""
    return FcmEmulator(project_id=PROJECT, public_keys=account[1], latency=0.02)


@pytest.fixture
def served(live_emulator: FcmEmulator) -> Iterator[str]:
    """The live emulator on a loopback port (hypercorn: HTTP/1.1 and h2c); its base URL."""
    with serve_in_thread(live_emulator) as url:
        yield url


@pytest.fixture
def account_file(
    tmp_path: Path, served: str, account: tuple[dict[str, str], dict[str, str]]
) -> Path:
    """The service account with token_uri on the served emulator."""
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({**account[0], "token_uri": f"{served}/token"}))
    return path
