"""Zoho OAuth 2.0: the refresh-token grant, a sans-I/O core and a cached, single-flight source.

Design:

- **Pure core.** ``refresh_request`` builds the token request and ``parse_refresh`` turns Zoho's
  answer into an ``AccessToken`` or an error of the tree below; neither does I/O, and time is
  passed in. ``api_error`` classifies a failed answer of the CRM API the same way, for every
  caller of that API (channel renewal now, the CRM bridge later).
- **Zoho's quirks, handled in one place.** Errors arrive as ``{"error": "..."}``, often with
  HTTP 200, so the body decides, not the status. ``Access Denied`` ("too many requests") means the
  refresh token is blocked for the rest of a 10-minute window. ``expires_in`` is seconds today;
  older answers carried ``expires_in_sec`` with ``expires_in`` in milliseconds, and some answers
  omit it (clients broke on both), so both shapes are read and a missing value means Zoho's
  documented hour. ``api_domain`` in the answer names the API host of the account's data centre
  and is used as the API base.
- **TokenSource** caches the token until shortly before it expires (5 minutes early, or half its
  life for a short one), refreshes single-flight (concurrent callers await one shared refresh,
  shielded so that one caller's cancellation does not cancel it for the others), and keeps a
  ``RefreshBudget``: Zoho allows 10 refreshes per refresh token per 10 minutes and then blocks
  the token, so a refresh that would exceed the budget is refused locally with
  ``ZohoRateLimited`` (carrying ``retry_after``) instead of being sent.
- **HTTP is injected**: an ``httpx.AsyncClient`` (tests give it
  ``httpx.ASGITransport(app=emulator)``), and so is the clock (wall time, because token expiry
  is shared with Zoho and, later, with other processes).
- **Shared mode** (``store=`` the job store, or anything with its shared-state methods): one
  token and one refresh at a time for the whole deployment (every worker process, and every
  instance when the store is PostgreSQL), because Zoho allows 10 refreshes per 10 minutes per
  refresh token and keeps only the last 10 access tokens, so per-process refreshing both
  burns the budget and invalidates other processes' tokens (zoho.md 2.3, 3.1 item 8; the SDK
  refreshes without any lock). A stale token is replaced thus: read ``zoho-token`` from the
  store (another process may have refreshed already); else take the store lock ``zoho-token``
  (a lease of ``timeout`` plus a margin, so a crashed holder delays the others only that long)
  and read again; else spend one call of the shared budget ``store.take("zoho-refresh", 10,
  600)`` (refused locally with ``ZohoRateLimited`` when spent, as is every refresh while a
  shared Access Denied block ``zoho-refresh-blocked`` lasts), refresh, and store the token with
  its expiry, so it also survives restarts. Processes that find the lock taken poll the store
  (20 ms, doubling to 0.5 s) until the token appears or the lock frees. The in-process
  single-flight stays in front, so a process sends at most one store poll at a time.
  The stored token is encrypted (AES-GCM) with a key derived from the client secret and the
  refresh token: the database alone does not give it away, and a token stored for other
  credentials simply fails to decrypt and is replaced. Without a store, each process
  refreshes its own token within its own ``RefreshBudget`` (the channel renewal's mode).

Errors::

    PatchbayError
    └── ZohoError (502)              Zoho failed us
        ├── ZohoAuthError (502)      the accounts server refused the credentials: fix settings
        ├── ZohoApiError (502)       the CRM API refused the request (``http_status``, ``zoho_code``)
        │   └── ...                  refined by Zoho's code in ``crm.zoho`` (access, invalid,
        │                            not found, too large)
        └── ZohoUnavailable (503)    network error, timeout, 5xx, unreadable answer: retry later
            ├── ZohoRateLimited      refresh budget spent, Access Denied, HTTP 429 (``retry_after``)
            └── ZohoUncertain        (``crm.zoho``) sent, answer lost: it may have been done

``crm.zoho`` draws the whole CRM branch, with the local refusals (``CrmRequestError``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

import httpx
import orjson
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from patchbay.errors import ConfigError, PatchbayError
from patchbay.jobs.store import Value
from patchbay.settings import CrmSettings

log = structlog.get_logger("patchbay.crm")

TOKEN_PATH: Final = "/oauth/v2/token"
DEFAULT_LIFETIME: Final = 3600.0  # Zoho's documented access-token life, used when none is given
REFRESH_EARLY: Final = 300.0  # refresh this long before expiry (zoho.md 5.1)
REFRESH_LIMIT: Final = 10  # refreshes per refresh token ...
REFRESH_WINDOW: Final = 600.0  # ... per this many seconds, then Zoho blocks the token
INVALID_TOKEN: Final = "INVALID_TOKEN"
TOKEN_KEY: Final = "zoho-token"  # the store value holding the token, and the refresh lock
BUDGET_BUCKET: Final = "zoho-refresh"  # the store's sliding window of refreshes sent
BLOCKED_KEY: Final = "zoho-refresh-blocked"  # set for the rest of a window after Access Denied
LOCK_MARGIN: Final = 10.0  # seconds the refresh lock outlives the refresh's HTTP timeout
POLL_FIRST: Final = 0.02  # seconds between looks at the store while another process refreshes
POLL_MAX: Final = 0.5
_instances = itertools.count(1)


# -- errors ------------------------------------------------------------------------------------


class ZohoError(PatchbayError):
    """Zoho failed a request Patchbay made."""

    code = "zoho"
    status = 502


class ZohoAuthError(ZohoError):
    """The accounts server refused the credentials; retrying will not help until they change."""

    code = "zoho_auth"
    status = 502


class ZohoApiError(ZohoError):
    """The CRM API refused a request with an error code (not a transient failure)."""

    code = "zoho_api"
    status = 502

    def __init__(self, message: str, *, http_status: int, zoho_code: str, **detail: Any) -> None:
        super().__init__(message, http_status=http_status, zoho_code=zoho_code, **detail)
        self.http_status = http_status
        self.zoho_code = zoho_code


class ZohoUnavailable(ZohoError):
    """Zoho could not be reached or answered 5xx or nonsense; try again later."""

    code = "zoho_unavailable"
    status = 503


class ZohoRateLimited(ZohoUnavailable):
    """Too many requests: wait ``retry_after`` seconds (None when Zoho does not say)."""

    code = "zoho_rate_limited"

    def __init__(self, message: str, *, retry_after: float | None, **detail: Any) -> None:
        super().__init__(message, retry_after=retry_after, **detail)
        self.retry_after = retry_after


# Why each refusal happens, for a message that tells the operator what to fix.
AUTH_HINTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "invalid_code": (
            "the refresh token is wrong, revoked, or belongs to another data centre or "
            "environment (check crm.refresh_token and crm.data_center)"
        ),
        "invalid_client": "crm.client_id is unknown to this data centre's accounts server",
        "invalid_client_secret": "crm.client_secret does not match zoho.client_id",
    }
)


# -- shared state ------------------------------------------------------------------------------


class SharedState(Protocol):
    """What the token source and the CRM limiter need of the job store (``jobs.store.Store``).

    Values, locks and sliding-window budgets that every worker process (and, on PostgreSQL,
    every instance) sees alike; see ``Store`` for the exact contract.
    """

    async def get_value(self, key: str) -> Value | None:
        """The value under ``key``, unless missing or expired."""

    async def set_value(self, key: str, data: bytes, *, expires_at: float | None = None) -> None:
        """Store ``data`` under ``key`` until ``expires_at``."""

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take (or extend) the lock ``name`` for ``ttl`` seconds; False: someone else has it."""

    async def release(self, name: str, owner: str) -> None:
        """Free the lock ``name`` if ``owner`` holds it."""

    async def take(self, bucket: str, limit: int, window: float) -> float:
        """Spend one call of ``limit`` per ``window`` seconds; else the seconds to wait."""


def unique_owner(kind: str) -> str:
    """A lock owner name unique to this object in this process on this host."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{next(_instances)}:{secrets.token_hex(4)}"


# -- data centres ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataCentre:
    """Where one Zoho data centre's accounts server and production API live."""

    code: str
    accounts_url: str
    api_domain: str


def _dc(code: str, accounts: str, api: str) -> DataCentre:
    return DataCentre(code, f"https://{accounts}", f"https://{api}")


# zoho.md 2.4. A refresh token works only against the accounts server of its own data centre.
DATA_CENTRES: Final[Mapping[str, DataCentre]] = MappingProxyType(
    {
        "us": _dc("us", "accounts.zoho.com", "www.zohoapis.com"),
        "com": _dc("us", "accounts.zoho.com", "www.zohoapis.com"),
        "eu": _dc("eu", "accounts.zoho.eu", "www.zohoapis.eu"),
        "in": _dc("in", "accounts.zoho.in", "www.zohoapis.in"),
        "au": _dc("au", "accounts.zoho.com.au", "www.zohoapis.com.au"),
        "jp": _dc("jp", "accounts.zoho.jp", "www.zohoapis.jp"),
        "ca": _dc("ca", "accounts.zohocloud.ca", "www.zohoapis.ca"),
        "cn": _dc("cn", "accounts.zoho.com.cn", "www.zohoapis.com.cn"),
        "sa": _dc("sa", "accounts.zoho.sa", "www.zohoapis.sa"),
    }
)


def data_center(code: str) -> DataCentre:
    """The data centre called ``code`` (``us`` or ``com``, ``eu``, ``in``, ...)."""
    try:
        return DATA_CENTRES[code.lower()]
    except KeyError:
        known = ", ".join(DATA_CENTRES)
        raise ConfigError(f"crm.data_center: expected one of {known}, got {code!r}") from None


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """A refresh token, its client, and where to use them; secrets never appear in a repr."""

    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    accounts_url: str = DATA_CENTRES["us"].accounts_url
    api_domain: str = DATA_CENTRES["us"].api_domain  # used when the answer names none
    api_override: str = ""  # beats the answer's api_domain (emulator, tests)

    @classmethod
    def from_settings(cls, zoho: CrmSettings) -> Credentials:
        """Credentials from ``[crm]``: the data centre's hosts unless overridden."""
        dc = data_center(zoho.data_center)
        return cls(
            client_id=zoho.client_id,
            client_secret=zoho.client_secret,
            refresh_token=zoho.refresh_token,
            accounts_url=(zoho.accounts_url or dc.accounts_url).rstrip("/"),
            api_domain=dc.api_domain,
            api_override=zoho.api_url.rstrip("/"),
        )


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access token, the API base it is for, and when it was obtained and expires."""

    value: str = field(repr=False)
    api_domain: str
    obtained_at: float
    expires_at: float
    token_type: str = "Bearer"

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value Zoho's API wants (not ``Bearer``)."""
        return f"Zoho-oauthtoken {self.value}"

    def usable(self, now: float, early: float = REFRESH_EARLY) -> bool:
        """Whether to keep using it: more than ``early`` (at most half its life) is left."""
        lead = min(early, (self.expires_at - self.obtained_at) / 2)
        return now < self.expires_at - lead


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """The token request to send: a form POST, so that secrets stay out of URLs and logs."""

    url: str
    form: Mapping[str, str] = field(repr=False)


def refresh_request(credentials: Credentials) -> RefreshRequest:
    """The refresh-token grant for ``credentials``."""
    return RefreshRequest(
        url=credentials.accounts_url + TOKEN_PATH,
        form={
            "grant_type": "refresh_token",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "refresh_token": credentials.refresh_token,
        },
    )


def parse_refresh(status: int, body: bytes, *, now: float, credentials: Credentials) -> AccessToken:
    """The token in a refresh answer, or the ``ZohoError`` it means."""
    data = _json_object(body)
    if data is None:
        raise ZohoUnavailable(
            f"Zoho accounts answered HTTP {status} with a body that is not a JSON object",
            http_status=status,
        )
    error = data.get("error")
    if error is not None:
        error = str(error)
        description = str(data.get("error_description", ""))
        if is_rate_limited(error, description):
            raise ZohoRateLimited(
                "Zoho refused to refresh the token: too many refreshes "
                f"({REFRESH_LIMIT} per {REFRESH_WINDOW / 60:g} minutes), blocked for now",
                retry_after=REFRESH_WINDOW,
                error=error,
            )
        if status >= 500:
            raise ZohoUnavailable(
                f"Zoho accounts failed: HTTP {status} {error}", http_status=status
            )
        hint = AUTH_HINTS.get(error, "Zoho gave no further reason")
        raise ZohoAuthError(f"Zoho refused the token refresh ({error}): {hint}", error=error)
    if status >= 500 or status == 429:
        raise ZohoUnavailable(f"Zoho accounts failed: HTTP {status}", http_status=status)
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        raise ZohoUnavailable(
            f"Zoho accounts answered HTTP {status} with neither a token nor an error",
            http_status=status,
        )
    lifetime = _lifetime(data)
    answered = data.get("api_domain")
    api_domain = credentials.api_override or (
        answered.rstrip("/") if isinstance(answered, str) and answered else credentials.api_domain
    )
    return AccessToken(
        value=value,
        api_domain=api_domain,
        obtained_at=now,
        expires_at=now + lifetime,
        token_type=str(data.get("token_type", "Bearer")),
    )


def is_rate_limited(error: str, description: str) -> bool:
    """Whether a token error is Zoho's refresh throttle ("Access Denied ... too many requests")."""
    text = f"{error} {description}".lower()
    return error.strip().lower() == "access denied" or "too many requests" in text


def api_error(status: int, body: bytes) -> ZohoError:
    """The error a failed CRM API answer means.

    429 and 5xx are transient (``ZohoRateLimited``, ``ZohoUnavailable``); anything else is a
    ``ZohoApiError`` with Zoho's code, read from the top level or the first item of the answer's
    list (``data``, ``watch``, ...). 401 ``INVALID_TOKEN`` is one too: the caller refreshes once.
    """
    data = _json_object(body) or {}
    item: Mapping[str, Any] = data
    if "code" not in data:
        for value in data.values():
            if isinstance(value, list) and value and isinstance(value[0], Mapping):
                item = value[0]
                break
    zoho_code = str(item.get("code", "")) or f"HTTP_{status}"
    message = str(item.get("message", "")) or "no message"
    if status == 429:
        return ZohoRateLimited(
            f"Zoho API rate limit ({zoho_code}): {message}", retry_after=None, http_status=status
        )
    if status >= 500:
        return ZohoUnavailable(f"Zoho API failed: HTTP {status} {zoho_code}", http_status=status)
    return ZohoApiError(
        f"Zoho API refused the request: HTTP {status} {zoho_code}: {message}",
        http_status=status,
        zoho_code=zoho_code,
        details=item.get("details"),
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _lifetime(data: Mapping[str, Any]) -> float:
    # ``expires_in_sec`` is the older answers' seconds (their ``expires_in`` was milliseconds).
    for key in ("expires_in_sec", "expires_in"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        if seconds <= 0:
            continue
        # No access token lives a day; a number that large can only be milliseconds.
        return seconds / 1000.0 if seconds > 86400 else seconds
    return DEFAULT_LIFETIME


def seal(token: AccessToken, credentials: Credentials, nonce: bytes | None = None) -> bytes:
    """``token`` encrypted for the store, under a key only these credentials give."""
    plain = orjson.dumps(
        {
            "access_token": token.value,
            "api_domain": token.api_domain,
            "obtained_at": token.obtained_at,
            "expires_at": token.expires_at,
            "token_type": token.token_type,
        }
    )
    nonce = nonce or secrets.token_bytes(12)
    return nonce + AESGCM(_key(credentials)).encrypt(nonce, plain, TOKEN_KEY.encode())


def unseal(data: bytes, credentials: Credentials) -> AccessToken | None:
    """The token ``seal`` stored, or None when it is unreadable or for other credentials."""
    try:
        plain = AESGCM(_key(credentials)).decrypt(data[:12], data[12:], TOKEN_KEY.encode())
        raw = orjson.loads(plain)
        return AccessToken(
            value=str(raw["access_token"]),
            # The override is a setting of this process; the stored domain is Zoho's answer.
            api_domain=credentials.api_override or str(raw["api_domain"]),
            obtained_at=float(raw["obtained_at"]),
            expires_at=float(raw["expires_at"]),
            token_type=str(raw.get("token_type", "Bearer")),
        )
    except (InvalidTag, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None


def _key(credentials: Credentials) -> bytes:
    material = "\0".join(
        (TOKEN_KEY, credentials.client_id, credentials.client_secret, credentials.refresh_token)
    )
    return hashlib.sha256(material.encode()).digest()


# -- the refresh budget ------------------------------------------------------------------------


class RefreshBudget:
    """At most ``limit`` refreshes in any ``window`` seconds; state, so a plain class.

    Every request sent counts, whatever its answer, since Zoho cannot be asked what it counted.
    """

    __slots__ = ("_blocked_until", "_sent", "limit", "window")

    def __init__(self, limit: int = REFRESH_LIMIT, window: float = REFRESH_WINDOW) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a refresh budget needs a positive limit and window")
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()
        self._blocked_until = 0.0

    def wait(self, now: float) -> float:
        """Seconds until a refresh may be sent; 0 when one may be sent now."""
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        wait = self._blocked_until - now
        if len(self._sent) >= self.limit:
            wait = max(wait, self._sent[0] + self.window - now)
        return max(wait, 0.0)

    def spend(self, now: float) -> None:
        """Count a refresh sent at ``now``."""
        self._sent.append(now)

    def block(self, until: float) -> None:
        """Send nothing before ``until`` (Zoho said Access Denied)."""
        self._blocked_until = max(self._blocked_until, until)


# -- the token source --------------------------------------------------------------------------


class TokenSource:
    """Access tokens for one refresh token: cached, refreshed single-flight, within budget."""

    def __init__(
        self,
        credentials: Credentials,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
        early: float = REFRESH_EARLY,
        budget: RefreshBudget | None = None,
        store: SharedState | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.credentials = credentials
        self.http = http
        self.clock = clock  # wall time: expiries are shared with Zoho and the store
        self.timeout = timeout
        self.early = early
        self.budget = budget or RefreshBudget()  # without a store only
        self.store = store
        self.sleep = sleep
        self.owner = unique_owner("zoho-token")
        self.refreshes = 0  # requests sent to the accounts server, for stats and tests
        self._token: AccessToken | None = None
        self._flight: asyncio.Task[AccessToken] | None = None
        # Tokens the API refused: a copy still in the store must not be taken up again.
        self._rejected: deque[str] = deque(maxlen=16)

    @classmethod
    def from_settings(
        cls,
        zoho: CrmSettings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        store: SharedState | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> TokenSource:
        """A source for the ``[crm]`` account, shared through ``store`` when given."""
        return cls(
            Credentials.from_settings(zoho),
            http,
            clock=clock,
            timeout=zoho.timeout,
            store=store,
            sleep=sleep,
        )

    async def token(self) -> AccessToken:
        """A usable access token: the cached one, or one fresh refresh shared by every caller."""
        cached = self._token
        if cached is not None and cached.usable(self.clock(), self.early):
            return cached
        flight = self._flight
        if flight is None or flight.done():
            work = self._refresh() if self.store is None else self._shared(self.store)
            flight = asyncio.get_running_loop().create_task(work)
            flight.add_done_callback(_retrieve)
            self._flight = flight
        return await asyncio.shield(flight)

    def invalidate(self, token: AccessToken) -> None:
        """Forget ``token`` (the API said INVALID_TOKEN), unless a newer one replaced it."""
        if token.value not in self._rejected:
            self._rejected.append(token.value)
        if self._token is not None and self._token.value == token.value:
            self._token = None

    async def aclose(self) -> None:
        """Cancel a refresh still in flight (the HTTP client belongs to the caller)."""
        flight, self._flight = self._flight, None
        if flight is not None and not flight.done():
            flight.cancel()
            await asyncio.wait([flight])

    async def _shared(self, store: SharedState) -> AccessToken:
        # One process refreshes, the others wait for its token to appear in the store.
        ttl = self.timeout + LOCK_MARGIN
        delay = POLL_FIRST
        waited = 0.0
        while True:
            token = await self._stored(store)
            if token is not None:
                return token
            if await store.acquire(TOKEN_KEY, self.owner, ttl):
                try:
                    # Read again: the previous holder may have stored a token just before.
                    token = await self._stored(store)
                    if token is not None:
                        return token
                    return await self._shared_refresh(store)
                finally:
                    await self._release(store)
            if waited > 2 * ttl:  # the lock outlives its ttl: the store's clock is off
                raise ZohoUnavailable(
                    f"waited {waited:.0f} s for another process to refresh the Zoho token"
                )
            await self.sleep(delay)
            waited += delay
            delay = min(delay * 2, POLL_MAX)

    async def _release(self, store: SharedState) -> None:
        try:
            await store.release(TOKEN_KEY, self.owner)
        except PatchbayError as exc:
            # The lease runs out on its own; failing the refresh for this would waste it.
            log.warning("zoho token lock not released", error=str(exc))

    async def _stored(self, store: SharedState) -> AccessToken | None:
        value = await store.get_value(TOKEN_KEY)
        token = None if value is None else unseal(value.data, self.credentials)
        if (
            token is None
            or token.value in self._rejected
            or not token.usable(self.clock(), self.early)
        ):
            return None
        self._token = token
        return token

    async def _shared_refresh(self, store: SharedState) -> AccessToken:
        now = self.clock()
        blocked = await store.get_value(BLOCKED_KEY)
        if blocked is not None and blocked.expires_at is not None and blocked.expires_at > now:
            raise ZohoRateLimited(
                "refusing a Zoho token refresh: Zoho said Access Denied (too many refreshes) "
                f"and blocks the refresh token for {blocked.expires_at - now:.0f} s more",
                retry_after=blocked.expires_at - now,
            )
        wait = await store.take(BUDGET_BUCKET, self.budget.limit, self.budget.window)
        if wait > 0:
            raise ZohoRateLimited(
                f"refusing a Zoho token refresh for {wait:.0f} s: {self.budget.limit} refreshes "
                f"in {self.budget.window / 60:g} minutes already (all processes), and one more "
                "would get the refresh token blocked",
                retry_after=wait,
            )
        try:
            token = await self._send()
        except ZohoRateLimited as exc:
            until = self.clock() + (exc.retry_after or REFRESH_WINDOW)
            await store.set_value(BLOCKED_KEY, b"1", expires_at=until)
            raise
        await store.set_value(TOKEN_KEY, seal(token, self.credentials), expires_at=token.expires_at)
        return token

    async def _refresh(self) -> AccessToken:
        now = self.clock()
        wait = self.budget.wait(now)
        if wait > 0:
            raise ZohoRateLimited(
                f"refusing a Zoho token refresh for {wait:.0f} s: {self.budget.limit} refreshes "
                f"in {self.budget.window / 60:g} minutes already, and one more would get the "
                "refresh token blocked",
                retry_after=wait,
            )
        self.budget.spend(now)
        try:
            return await self._send()
        except ZohoRateLimited as exc:
            # Zoho counts what we cannot see (other processes, other tools with this token).
            self.budget.block(self.clock() + (exc.retry_after or REFRESH_WINDOW))
            raise

    async def _send(self) -> AccessToken:
        request = refresh_request(self.credentials)
        self.refreshes += 1
        try:
            response = await self.http.post(
                request.url, data=dict(request.form), timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise ZohoUnavailable(
                f"cannot reach Zoho accounts at {self.credentials.accounts_url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        token = parse_refresh(
            response.status_code,
            response.content,
            now=self.clock(),
            credentials=self.credentials,
        )
        self._token = token
        log.info(
            "zoho token refreshed",
            api_domain=token.api_domain,
            expires_in=round(token.expires_at - token.obtained_at),
        )
        return token


async def authorized_request(
    tokens: TokenSource,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send a CRM API request (``path`` under the token's API base) with a current token.

    On 401 ``INVALID_TOKEN`` (Zoho dropped the token early: an eleventh was issued elsewhere, or
    it was revoked) the token is forgotten and the request sent once more with a fresh one.
    Transport errors become ``ZohoUnavailable``; every answer is returned, for the caller to read
    or hand to ``api_error``.
    """
    content = None if json is None else orjson.dumps(json)
    headers = {} if content is None else {"content-type": "application/json"}
    for attempt in (1, 2):
        token = await tokens.token()
        try:
            response = await tokens.http.request(
                method,
                token.api_domain + path,
                content=content,
                params=params,
                headers={**headers, "authorization": token.authorization},
                timeout=tokens.timeout,
            )
        except httpx.HTTPError as exc:
            raise ZohoUnavailable(
                f"cannot reach the Zoho API at {token.api_domain}: {type(exc).__name__}: {exc}"
            ) from exc
        if attempt == 1 and response.status_code == 401:
            error = api_error(response.status_code, response.content)
            if isinstance(error, ZohoApiError) and error.zoho_code == INVALID_TOKEN:
                tokens.invalidate(token)
                continue
        return response
    raise AssertionError("unreachable")  # pragma: no cover


def _retrieve(task: asyncio.Task[AccessToken]) -> None:
    # Every caller may have been cancelled; mark the outcome seen so asyncio does not warn.
    if not task.cancelled():
        task.exception()
