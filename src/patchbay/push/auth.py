"""OAuth access tokens for FCM from a service account, refreshed once for every sender.

Design:

- **google-auth signs, our HTTP client carries.** ``google.oauth2.service_account.Credentials``
  (scope ``firebase.messaging``) builds and signs the JWT-bearer assertion and parses the token
  answer, and it POSTs to the file's ``token_uri``, so a service account whose ``token_uri``
  points at the emulator works unchanged. Its ``refresh`` is blocking, so it runs in a worker
  thread (``asyncio.to_thread``); the one HTTP request it makes is handed back to the event loop
  and sent through the sender's own transport (``transport.py``: its aiohttp session or httpx
  clients; an ``httpx.AsyncClient`` is accepted too) by ``_LoopRequest``. That keeps one HTTP
  stack, one set of timeouts, and lets tests route the token request to an in-process emulator
  with ``httpx.ASGITransport``; it also means no ``requests`` dependency.
- **Single flight.** ``token()`` returns the cached token while it is fresh; otherwise every
  concurrent caller awaits one shared refresh task (shielded, so a cancelled caller does not
  cancel it for the others). A 10,000-message burst across an expiry costs one token request.
- **Refresh early.** A token is renewed when less than 5 minutes are left, or, for short-lived
  tokens, after 80 % of its life (a 60-second token is renewed at 48 s), so no request leaves with
  a token that expires on the way. FCM answering 401 anyway (a revoked token, a clock jump) is
  handled by the sender: ``invalidate`` then one retry with a fresh token.
- **Failures are remembered briefly.** A refused service account would otherwise be re-sent for
  every message of a large send; the error is re-raised without a request for a cooldown
  (60 s when refused, 1 s when unreachable).
- **The clock is injected** (monotonic by default): expiry is local to this process.
- **Tests may pass any ``TokenSource``** (the protocol below) instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import google.auth.exceptions
import google.auth.transport
import httpx
import orjson
import structlog
from google.oauth2 import service_account

from patchbay.errors import ConfigError
from patchbay.push.errors import PushAuthError, PushError, PushUnavailable
from patchbay.push.transport import Reply, Transport, TransportFailure, as_transport

log = structlog.get_logger("patchbay.push")

SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
REFRESH_EARLY: Final = 300.0  # renew a token this long before it expires ...
REFRESH_AT: Final = 0.8  # ... or after this share of its life, whichever comes first
DEFAULT_LIFETIME: Final = 3600.0  # when the token answer names none
REFUSED_COOLDOWN: Final = 60.0  # seconds a refused service account is not tried again
UNAVAILABLE_COOLDOWN: Final = 1.0  # seconds an unreachable token endpoint is not tried again


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An OAuth access token and when (by the source's clock) it was obtained and expires."""

    value: str = field(repr=False)
    obtained_at: float
    expires_at: float

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        return f"Bearer {self.value}"

    def usable(self, now: float, early: float = REFRESH_EARLY) -> bool:
        """Whether to keep using it: renewal is due ``early`` seconds or 20 % of its life early."""
        lead = min(early, (self.expires_at - self.obtained_at) * (1.0 - REFRESH_AT))
        return now < self.expires_at - lead


class TokenSource(Protocol):
    """Where the sender gets access tokens (tests pass a fake one)."""

    async def token(self) -> AccessToken:
        """A token usable now; ``PushAuthError`` or ``PushUnavailable`` when none can be had."""
        ...

    def invalidate(self, token: AccessToken) -> None:
        """Forget ``token`` (FCM said 401), so that the next ``token()`` refreshes."""
        ...


def load_service_account(path: str | Path) -> dict[str, Any]:
    """The service-account JSON at ``path``; ``ConfigError`` naming the setting when unusable."""
    where = "push.service_account"
    if not str(path):
        raise ConfigError(f"{where}: required (the path of the service-account JSON file)")
    try:
        info = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{where}: {path} is not JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise ConfigError(f"{where}: {path} is not a JSON object")
    if info.get("type", "service_account") != "service_account":
        raise ConfigError(f"{where}: {path} is a {info.get('type')!r} file, not a service account")
    for key in ("client_email", "private_key", "token_uri"):
        if not isinstance(info.get(key), str) or not info[key]:
            raise ConfigError(f"{where}: {path} has no {key}")
    return info


class ServiceAccountTokens:
    """Access tokens for one service account: cached, refreshed early and single-flight."""

    def __init__(
        self,
        credentials: service_account.Credentials,
        http: httpx.AsyncClient | Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 30.0,
        early: float = REFRESH_EARLY,
    ) -> None:
        self.credentials = credentials
        self.http = as_transport(http)  # not closed here: it is the sender's (or the caller's)
        self.clock = clock
        self.timeout = timeout
        self.early = early
        self.refreshes = 0  # token requests started, for stats and tests
        self._token: AccessToken | None = None
        self._flight: asyncio.Task[AccessToken] | None = None
        self._failure: tuple[float, PushError] | None = None  # (until, error)

    @classmethod
    def from_info(
        cls, info: Mapping[str, Any], http: httpx.AsyncClient | Transport, **kwargs: Any
    ) -> ServiceAccountTokens:
        """A source for the parsed service-account JSON ``info``."""
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                dict(info), scopes=[SCOPE]
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"push.service_account: unusable service account: {exc}") from exc
        return cls(credentials, http, **kwargs)

    @classmethod
    def from_file(
        cls, path: str | Path, http: httpx.AsyncClient | Transport, **kwargs: Any
    ) -> ServiceAccountTokens:
        """A source for the service-account JSON file at ``path``."""
        return cls.from_info(load_service_account(path), http, **kwargs)

    @property
    def project_id(self) -> str | None:
        """The service account's own project."""
        project: str | None = self.credentials.project_id
        return project

    async def token(self) -> AccessToken:
        """A usable token: the cached one, or one fresh refresh shared by every caller."""
        now = self.clock()
        cached = self._token
        if cached is not None and cached.usable(now, self.early):
            return cached
        failure = self._failure
        if failure is not None and now < failure[0]:
            raise failure[1]
        flight = self._flight
        if flight is None or flight.done():
            flight = asyncio.get_running_loop().create_task(self._refresh())
            flight.add_done_callback(_retrieve)
            self._flight = flight
        return await asyncio.shield(flight)

    def invalidate(self, token: AccessToken) -> None:
        """Forget ``token`` unless a newer one already replaced it."""
        if self._token is not None and self._token.value == token.value:
            self._token = None

    async def aclose(self) -> None:
        """Let a refresh in flight finish (its worker thread cannot be interrupted)."""
        flight, self._flight = self._flight, None
        if flight is not None and not flight.done():
            await asyncio.wait([flight])

    async def _refresh(self) -> AccessToken:
        self.refreshes += 1
        request = _LoopRequest(self.http, asyncio.get_running_loop(), self.timeout)
        started = self.clock()
        try:
            value, lifetime = await asyncio.to_thread(self._blocking_refresh, request)
        except PushError as exc:
            cooldown = REFUSED_COOLDOWN if isinstance(exc, PushAuthError) else UNAVAILABLE_COOLDOWN
            self._failure = (self.clock() + cooldown, exc)
            log.warning("fcm token refresh failed", error=exc.message)
            raise
        now = self.clock()
        token = AccessToken(value=value, obtained_at=started, expires_at=now + lifetime)
        self._token = token
        self._failure = None
        log.info("fcm token refreshed", expires_in=round(lifetime))
        return token

    def _blocking_refresh(self, request: _LoopRequest) -> tuple[str, float]:
        """Run google-auth's refresh (in a worker thread); the token and its remaining life."""
        try:
            self.credentials.refresh(request)  # type: ignore[no-untyped-call]
        except google.auth.exceptions.RefreshError as exc:
            if exc.retryable:
                raise PushUnavailable(f"the FCM token endpoint failed: {exc}") from exc
            raise PushAuthError(
                f"the service account {self.credentials.service_account_email} was refused: {exc}"
            ) from exc
        except google.auth.exceptions.TransportError as exc:
            raise PushUnavailable(f"cannot reach the token endpoint: {exc}") from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            raise PushAuthError(f"cannot sign the token request: {exc}") from exc
        value = self.credentials.token
        if not isinstance(value, str) or not value:
            raise PushUnavailable("the token endpoint answered without a token")
        expiry = self.credentials.expiry
        if not isinstance(expiry, datetime):
            return value, DEFAULT_LIFETIME
        # google-auth keeps expiry as naive UTC; what matters is the time left, read right now.
        left = (expiry - datetime.now(UTC).replace(tzinfo=None)).total_seconds()
        return value, max(left, 0.0)


class _Response(google.auth.transport.Response):
    """A transport's answer as google-auth reads it."""

    def __init__(self, reply: Reply) -> None:
        self._reply = reply

    @property
    def status(self) -> int:
        return self._reply.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._reply.headers

    @property
    def data(self) -> bytes:
        return self._reply.body


class _LoopRequest(google.auth.transport.Request):
    """google-auth's transport, called in a worker thread, sending on the event loop's client."""

    def __init__(self, http: Transport, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.http = http
        self.loop = loop
        self.timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        seconds = timeout or self.timeout
        future = asyncio.run_coroutine_threadsafe(
            self.http.request(method, url, body, headers or {}, seconds), self.loop
        )
        try:
            # A little over the transport's own timeout, in case the loop stops under us.
            reply = future.result(timeout=seconds + 5.0)
        except TransportFailure as exc:  # its text names the library's error already
            raise google.auth.exceptions.TransportError(str(exc)) from exc  # type: ignore[no-untyped-call]
        except httpx.HTTPError as exc:  # what httpx raises beyond its transport errors
            raise google.auth.exceptions.TransportError(  # type: ignore[no-untyped-call]
                f"{type(exc).__name__}: {exc}"
            ) from exc
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError) as exc:
            future.cancel()
            raise google.auth.exceptions.TransportError(  # type: ignore[no-untyped-call]
                "the token request timed out"
            ) from exc
        return _Response(reply)


def _retrieve(task: asyncio.Task[AccessToken]) -> None:
    # Every caller may have been cancelled; mark the outcome seen so asyncio does not warn.
    if not task.cancelled():
        task.exception()
