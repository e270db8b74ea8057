"""A faithful local Zoho: the accounts server, the CRM Attachments API and the notification API.

Built from the research notes (zoho.md section 4; webhooks.md 2.6; Zoho's own OpenAPI examples,
``zoho/crm-oas`` v8.0, for the bodies) so that the OAuth client, the attachment uploader and the
channel renewal are tested against Zoho's behaviour, quirks included, without a network. The
official ``zohocrmsdk8-0`` pointed at it uploads, lists, downloads and deletes, and an injected
fault reaches it as the same error code (tests/integration/test_zoho_sdk.py).

- **Accounts** ``POST /oauth/v2/token``: parameters in the query *or* a form body (the docs show
  the first, Zoho's SDK sends the second); the refresh-token grant, plus the authorization-code
  grant and ``/oauth/v2/token/revoke`` for completeness. Refusals come as Zoho sends them:
  ``{"error": "invalid_code"}`` (and ``invalid_client``, ``invalid_client_secret``) with
  **HTTP 200**. More than 10 refreshes of one refresh token within 10 minutes get
  ``{"error": "Access Denied", "error_description": "You have made too many requests
  continuously..."}`` (HTTP 400: the status is not documented, the body is). Only the last 10
  access tokens of a refresh token stay valid; issuing an eleventh invalidates the oldest. Each
  refresh token carries OAuth scopes (``scopes=``, default ``ZohoCRM.modules.ALL`` and
  ``ZohoCRM.notifications.ALL``), inherited by its access tokens.
- **API authentication**, every ``/crm/v{n}/...`` call: ``Authorization: Zoho-oauthtoken
  <token>`` (401 ``INVALID_TOKEN`` for an unknown, expired or superseded token; 401
  ``AUTHENTICATION_FAILURE`` when the header is missing or uses another scheme).
- **Attachments** ``/crm/v{n}/{module}/{record_id}/Attachments`` (any version from 2; the SDK
  sends v8): ``POST`` uploads a multipart ``file`` or links an ``attachmentUrl`` (+ ``title``,
  in the query as the SDK sends them or as form fields as the docs' curl does; both a file and a
  link is 400 ``INVALID_DATA``, neither 400 ``MANDATORY_NOT_FOUND``). The body is parsed as it
  streams (python-multipart), the file's bytes counted and hashed, and a file over
  ``max_upload_bytes`` (default 20 MiB, the blog's rule; 100 MiB is v8's) is refused with 413
  ``FILE_SIZE_MORE_THAN_ALLOWED_SIZE`` once the body has been read, so that the client sees the
  answer rather than a broken pipe. ``GET`` lists (``fields`` required, else 400
  ``REQUIRED_PARAM_MISSING``; ``per_page`` at most 200, ``page`` or ``page_token``, ``ids``),
  ``GET .../{id}`` downloads (400 ``DOWNLOAD_NOT_ALLOWED`` for a link), ``DELETE .../{id}`` and
  ``DELETE ...?ids=`` delete. Modules: the v8 list that takes attachments plus custom modules
  (``CustomModuleN`` or ``custom_modules=``), matched case-insensitively; anything else
  (Reports, Dashboards, Forecasts, Users...) is 400 ``INVALID_MODULE``. Every positive numeric
  record id exists unless ``records=`` lists the ones that do; another is 400 ``INVALID_DATA``
  "the related id given seems to be invalid" (``resource_path_index: 1``). Scopes:
  ``ZohoCRM.modules.ALL`` or ``ZohoCRM.modules.attachments.{ALL|CREATE|READ|DELETE|WRITE}``,
  else 401 ``OAUTH_SCOPE_MISMATCH``. Bodies, success and error, are the OAS examples' shapes.
- **Limits** (``Limits``, on ``limit_clock``, which may run faster than real time:
  ``ScaledClock(60)`` makes a real second an emulated minute): the blog's v1 rule, more than
  ``upload_limit`` (60) uploads within a sliding ``upload_window`` (60 s) blocks all API calls for
  ``block_seconds`` (300 s), the call that overflows included (``upload_limit=None`` switches it
  off); optional 24-hour credits (``daily_credits``, with ``X-API-CREDITS-REMAINING`` once half
  are used) and a concurrency cap (``concurrency_limit``). Refusals are 429 with Zoho's body
  (code ``rate_limit_code``, default ``TOO_MANY_REQUESTS``) and no ``Retry-After``, as documented.
- **Faults** (``Fault``, ``ZohoEmulator.inject``), scripted per method, module, record id or call
  number on the Attachments API: any HTTP error with Zoho's body (429, 500, 503...), a slow
  answer, the connection dropped before the request is processed, or dropped after it was
  (the attachment *is* stored, the client never hears so). A drop closes the socket with no
  answer under uvicorn and hypercorn; in process (``httpx.ASGITransport``) it raises
  ``ConnectionDropped``, an ``httpx.RemoteProtocolError``, as a real drop would.
- **Ledger** for assertions: ``uploads`` (every attachment ever stored, with module, record id,
  file name, size, sha256, id, created time; deleted ones flagged), ``attachments`` (the live
  ones), ``calls`` (every request answered, with both clocks' times; status 0 for a dropped
  one), ``upload_times``, ``block_events``/``blocked_count``, ``peak_in_flight``.
- **Notifications** ``/crm/v{n}/actions/watch``: ``POST`` subscribes or renews (events are added
  to a live channel), ``PUT`` replaces a live channel, ``PATCH`` changes the fields given
  (``_delete_events: true`` removes the events given), ``GET`` lists live channels (filters
  ``channel_id``, ``module``; 204 when none), ``DELETE ?channel_ids=`` unsubscribes. Validation:
  at most 50 channels per request and 50 events per channel, ``Module.create|edit|delete|all``
  events, an http(s) ``notify_url``, a token of at most 50 characters, and ``channel_expiry`` as
  Zoho documents it: missing, or more than a week ahead (a day before API v4), means **one
  hour**. An expiry in the past, or without a UTC offset, is refused with ``INVALID_DATA`` (an
  inference: the docs do not say). Each item of an answer has ``code``/``message``/``status`` and
  ``details.events`` (one per module with ``channel_expiry``, ``resource_uri``, ``resource_id``,
  ``resource_name``, ``channel_id``); the answer is 200 when every item succeeded, 207 for a mix,
  400 when none did. An expired channel is gone, as at Zoho, but stays in ``channels`` for tests
  to inspect. ``notification()`` builds the body Zoho would POST to a channel's ``notify_url``
  and ``notify()`` posts it through any ``httpx.AsyncClient``.

Inferences where Zoho does not document: module names match case-insensitively; both a file and
a link, a second ``file`` part, a broken multipart body, a bad ``per_page`` or ``page_token`` are
400 ``INVALID_DATA``; lists are newest first; ``WRITE`` covers create and delete.

Design: a plain ASGI callable (no framework is installed, and the emulator needs only routing)
with injected clocks. Routes are a table of ``(method, path pattern, handler)``, state lives in
one object per concern (``Accounts``, ``Notifications``, ``Limits``, the attachment ledger); a
handler reads the body only when it wants it (``await request.body()`` or ``request.stream()``),
so the upload handler counts bytes as they arrive. It imports nothing from the client it tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
import time
import zlib
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import orjson
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HOUR: Final = 3600.0
DAY: Final = 86400.0
WEEK: Final = 7 * DAY
MAX_CHANNELS: Final = 50  # per request
MAX_EVENTS: Final = 50  # per channel
MAX_TOKEN: Final = 50  # characters of a channel's token (the OAS says 256; the docs say 50)
OPERATIONS: Final = ("create", "edit", "delete", "all")
# A callback's ``operation`` and the event operation that subscribes to it.
CALLBACK_OPERATIONS: Final[Mapping[str, str]] = {
    "insert": "create",
    "update": "edit",
    "delete": "delete",
}
TOO_MANY: Final = "You have made too many requests continuously. Please try again after some time."
_MODULE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

MB: Final = 1024 * 1024
BLOG_LIMIT: Final = 20 * MB  # the blog's (v1) rule, and the default
V8_LIMIT: Final = 100 * MB  # what the v8 docs and OpenAPI state
# The modules that take attachments in v8, by API name (the docs list them by display name).
ATTACHMENT_MODULES: Final = (
    "Leads",
    "Accounts",
    "Contacts",
    "Deals",
    "Campaigns",
    "Tasks",
    "Cases",
    "Events",
    "Calls",
    "Solutions",
    "Products",
    "Vendors",
    "Price_Books",
    "Quotes",
    "Sales_Orders",
    "Purchase_Orders",
    "Invoices",
    "Appointments__s",
    "Services__s",
    "Notes",
)
DEFAULT_SCOPES: Final = ("ZohoCRM.modules.ALL", "ZohoCRM.notifications.ALL")
MAX_PER_PAGE: Final = 200
MAX_LINK: Final = 3000  # characters of an attachmentUrl
MAX_TITLE: Final = 255
MAX_FIELD: Final = 64 * 1024  # bytes of a non-file form field: a link and a title need far less
# The user every attachment is created by (Zoho answers with the token's user).
USER: Final[Mapping[str, str]] = {
    "name": "Patchbay Emulator",
    "id": "5725767000000411001",
    "email": "emulator@patchbay.invalid",
}
# Messages, as in Zoho's OpenAPI examples for the Attachments API.
INVALID_MODULE_MESSAGE: Final = "the module name given seems to be invalid"
INVALID_RECORD_MESSAGE: Final = "the related id given seems to be invalid"
INVALID_DATA_MESSAGE: Final = "invalid data provided"
TOO_LARGE_MESSAGE: Final = "Please check if the size of the file is in the correct range"
RATE_LIMIT_MESSAGE: Final = "API rate limit exceeded. Please retry after some time"
URL_PATTERN_MESSAGE: Final = "Please check if the URL trying to access is a correct one"
_CUSTOM_MODULE = re.compile(r"CustomModule\d+", re.IGNORECASE)
_ATTACHMENTS = r"/crm/v(\d+(?:\.\d+)?)/([^/]+)/([^/]+)/Attachments"


class ManualClock:
    """A clock that moves only when told: share one between the emulator and the code under test."""

    __slots__ = ("now",)

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        """The current time, epoch seconds."""
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds``; return the new time."""
        self.now += seconds
        return self.now


class ScaledClock:
    """Emulated time running ``factor`` times faster than real time, from ``start``.

    ``ScaledClock(60)`` makes one real second count as a minute, so that a client running in
    real time meets the 60-uploads-a-minute rule (and its 5-minute block) within seconds.
    """

    __slots__ = ("_origin", "factor", "start")

    def __init__(self, factor: float, start: float | None = None) -> None:
        if factor <= 0:
            raise ValueError(f"factor {factor!r}: expected a positive number")
        self.factor = factor
        self.start = time.time() if start is None else start
        self._origin = time.monotonic()

    def __call__(self) -> float:
        """The current emulated time, epoch seconds."""
        return self.start + (time.monotonic() - self._origin) * self.factor

    def real(self, seconds: float) -> float:
        """How many real seconds ``seconds`` of emulated time take."""
        return seconds / self.factor


# -- plumbing: requests, responses, routes -----------------------------------------------------


class Request:
    """One HTTP request to the emulator; the body is read only when a handler asks for it."""

    __slots__ = ("_body", "_receive", "headers", "method", "params", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        params: Sequence[str],
        receive: Receive,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query  # the first value of each parameter, as Zoho reads them
        self.headers = headers  # lower-case names
        self.params = tuple(params)  # the route pattern's groups
        self._receive = receive
        self._body: bytes | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as it arrives (for handlers that must not buffer it)."""
        if self._body is not None:
            yield self._body
            return
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def body(self) -> bytes:
        """The whole body."""
        if self._body is None:
            self._body = b"".join([chunk async for chunk in self.stream()])
        return self._body

    async def params_in_query_or_form(self) -> dict[str, str]:
        """Query parameters and, for a form body, its fields (the form wins a clash)."""
        fields = dict(self.query)
        content_type = self.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            fields.update(parse_qsl((await self.body()).decode("latin-1"), keep_blank_values=True))
        return fields


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler answers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # real seconds to wait before answering (a slow answer)
    drop: bool = False  # drop the connection instead of answering

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        """A JSON answer."""
        return cls(status, orjson.dumps(data))


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """Requests with one of ``methods`` whose path matches ``pattern`` (fully) go to ``handler``."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler


@dataclass(frozen=True, slots=True)
class Call:
    """One request the emulator answered, kept for tests (``ZohoEmulator.calls``).

    ``at`` is on the emulator's clock, ``limit_at`` on its limit clock (the same unless a
    ``limit_clock`` was given); ``status`` is 0 when the connection was dropped instead.
    """

    at: float
    method: str
    path: str
    status: int
    limit_at: float = 0.0


# -- accounts ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Grant:
    """One refresh token's state: its last refreshes and its still-valid access tokens."""

    refresh_token: str
    refreshes: deque[float] = field(default_factory=deque)
    access_tokens: deque[str] = field(default_factory=deque)
    revoked: bool = False
    scopes: frozenset[str] = frozenset()  # lower-case, as Zoho compares them


class Accounts:
    """The accounts server's state: one client, its refresh tokens, the access tokens issued."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        token_lifetime: float,
        refresh_limit: int,
        refresh_window: float,
        max_access_tokens: int,
        scopes: Sequence[str] = DEFAULT_SCOPES,
    ) -> None:
        self.scopes = tuple(scopes)  # for refresh tokens created without their own
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.refresh_limit = refresh_limit
        self.refresh_window = refresh_window
        self.max_access_tokens = max_access_tokens
        self.grants: dict[str, Grant] = {}
        self.codes: dict[str, float] = {}  # authorization code -> expires at
        self.expiry: dict[str, float] = {}  # access token -> expires at
        self.owner: dict[str, str] = {}  # access token -> refresh token
        self.refreshes = 0  # refresh-token grants that issued a token

    def new_refresh_token(
        self, scopes: Iterable[str] | None = None, value: str | None = None
    ) -> str:
        """Create a refresh token, as a grant would, with ``scopes`` (default: ``self.scopes``).

        ``value`` fixes the token (a command-line emulator keeps one across restarts).
        """
        value = value or f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        chosen = self.scopes if scopes is None else scopes
        self.grants[value] = Grant(value, scopes=frozenset(s.lower() for s in chosen))
        return value

    def scopes_of(self, access_token: str) -> frozenset[str]:
        """The (lower-case) scopes an access token was granted."""
        grant = self.grants.get(self.owner.get(access_token, ""))
        return frozenset() if grant is None else grant.scopes

    def new_code(self, now: float, lifetime: float = 120.0) -> str:
        """An authorization code (as a self-client would generate), valid for ``lifetime`` s."""
        code = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.codes[code] = now + lifetime
        return code

    def issue(self, grant: Grant, now: float) -> str:
        """A new access token for ``grant``; beyond the last ``max_access_tokens`` none stay."""
        value = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        grant.access_tokens.append(value)
        self.expiry[value] = now + self.token_lifetime
        self.owner[value] = grant.refresh_token
        while len(grant.access_tokens) > self.max_access_tokens:
            old = grant.access_tokens.popleft()
            self.expiry.pop(old, None)
            self.owner.pop(old, None)
        return value

    def valid(self, access_token: str, now: float) -> bool:
        """Whether the API accepts ``access_token`` now."""
        expires = self.expiry.get(access_token)
        grant = self.grants.get(self.owner.get(access_token, ""))
        return expires is not None and now < expires and grant is not None and not grant.revoked

    def expire(self, access_token: str) -> None:
        """Make an access token invalid at once (tests: a token Zoho dropped early)."""
        self.expiry.pop(access_token, None)


# -- notifications -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Channel:
    """A notification channel as Zoho holds it."""

    channel_id: int
    events: tuple[str, ...]
    notify_url: str
    token: str | None
    expires_at: float
    version: int = 8
    return_affected_field_values: bool = False
    notify_on_related_action: bool = True
    notification_condition: Any = None

    @property
    def modules(self) -> tuple[str, ...]:
        """The modules its events name, in order."""
        return tuple(dict.fromkeys(e.rpartition(".")[0] for e in self.events))

    def live(self, now: float) -> bool:
        """Whether it has not expired."""
        return now < self.expires_at

    def subscribed(self, module: str, operation: str) -> bool:
        """Whether a change of ``operation`` (create, edit, delete) in ``module`` notifies it."""
        return f"{module}.{operation}" in self.events or f"{module}.all" in self.events


class Notifications:
    """The notification API's state: every channel ever subscribed, live or expired."""

    def __init__(self) -> None:
        self.channels: dict[int, Channel] = {}

    def live(self, channel_id: int, now: float) -> Channel | None:
        """The channel, unless it is unknown or expired."""
        channel = self.channels.get(channel_id)
        return channel if channel is not None and channel.live(now) else None


class _Refused(Exception):
    """One watch item is invalid: ``item`` is its error entry."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.item = {"code": code, "details": details, "message": message, "status": "error"}


# -- limits ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """One block of the v1 upload rule: API access refused from ``started`` until ``until``."""

    started: float
    until: float


class Limits:
    """The API's limits on one clock: the v1 upload rule, 24-hour credits, concurrency.

    Zoho's current limits are credits per rolling 24 hours and a concurrency cap per app (both off
    unless given); the blog's rule is v1's: more than ``upload_limit`` uploads within a sliding
    ``upload_window`` block API access for ``block_seconds`` (``upload_limit=None``: off).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        upload_limit: int | None = 60,
        upload_window: float = 60.0,
        block_seconds: float = 300.0,
        daily_credits: int | None = None,
        concurrency_limit: int | None = None,
    ) -> None:
        self.clock = clock
        self.upload_limit = upload_limit
        self.upload_window = upload_window
        self.block_seconds = block_seconds
        self.daily_credits = daily_credits
        self.concurrency_limit = concurrency_limit
        self.upload_times: list[float] = []  # every admitted upload, on ``clock``
        self.block_events: list[Block] = []
        self.blocked_until = -math.inf
        self.in_flight = 0  # API requests being handled now
        self.peak_in_flight = 0
        self.refused = 0  # calls answered 429 by these limits
        self._recent: deque[float] = deque()  # admitted uploads within the window
        self._credits: deque[float] = deque()  # admitted calls within 24 hours

    def admit(self, *, upload: bool) -> bool:
        """Whether an API call (an upload when ``upload``) may proceed now; count it if so."""
        now = self.clock()
        refused = (
            now < self.blocked_until
            or (self.concurrency_limit is not None and self.in_flight > self.concurrency_limit)
            or not self._credit(now)
            or (upload and not self._upload(now))
        )
        self.refused += refused
        return not refused

    def _credit(self, now: float) -> bool:
        if self.daily_credits is None:
            return True
        while self._credits and self._credits[0] <= now - DAY:
            self._credits.popleft()
        if len(self._credits) >= self.daily_credits:
            return False
        self._credits.append(now)
        return True

    def _upload(self, now: float) -> bool:
        if self.upload_limit is not None:
            while self._recent and self._recent[0] <= now - self.upload_window:
                self._recent.popleft()
            if len(self._recent) >= self.upload_limit:
                # The overflowing call is refused too, and starts the block.
                self.blocked_until = now + self.block_seconds
                self.block_events.append(Block(now, self.blocked_until))
                return False
            self._recent.append(now)
        self.upload_times.append(now)
        return True

    def credits_remaining(self) -> int | None:
        """Credits left in the rolling 24 hours, or None when credits are not counted."""
        if self.daily_credits is None:
            return None
        now = self.clock()
        return self.daily_credits - sum(1 for at in self._credits if at > now - DAY)

    def max_uploads_within(self, window: float | None = None) -> int:
        """The most admitted uploads within any sliding ``window`` (default: the rule's)."""
        span = self.upload_window if window is None else window
        times = sorted(self.upload_times)
        best = first = 0
        for last, at in enumerate(times):
            while times[first] <= at - span:
                first += 1
            best = max(best, last - first + 1)
        return best


# -- faults ------------------------------------------------------------------------------------


FaultKind = Literal["error", "normal", "drop_before", "drop_after"]
# The body Zoho sends for an HTTP status, when a fault gives none (429 is the emulator's own).
_DEFAULT_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    401: ("INVALID_TOKEN", "invalid oauth token"),
    413: ("FILE_SIZE_MORE_THAN_ALLOWED_SIZE", TOO_LARGE_MESSAGE),
    500: ("INTERNAL_ERROR", "Internal Server Error"),
    503: ("SERVICE_UNAVAILABLE", "Service temporarily unavailable. Please try again later"),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """What the emulator does instead of (or on top of) answering one request normally.

    Build one with ``http``, ``slow``, ``drop_before`` or ``drop_after``; ``delay`` (real
    seconds) holds any of them back, so a slow 503 is ``Fault.http(503, delay=2)``.
    """

    kind: FaultKind
    status: int = 0
    body: Mapping[str, Any] | None = None  # None: Zoho's body for ``status``
    delay: float = 0.0

    @classmethod
    def http(
        cls,
        status: int,
        code: str | None = None,
        message: str | None = None,
        *,
        delay: float = 0.0,
        **details: Any,
    ) -> Fault:
        """Answer ``status`` with Zoho's error body, processing nothing.

        Without ``code``, 401, 413, 429, 500 and 503 get the body Zoho sends for them (429 the
        emulator's ``rate_limit_code``, with no ``Retry-After``, as documented); other statuses
        need a ``code``.
        """
        if code is None:
            if status != 429 and status not in _DEFAULT_ERRORS:
                raise ValueError(f"HTTP {status}: give the Zoho error code to answer with")
            return cls("error", status, None, delay)
        if message is None:
            known = (
                RATE_LIMIT_MESSAGE if status == 429 else _DEFAULT_ERRORS.get(status, ("", ""))[1]
            )
            message = known or code
        body = {"code": code, "details": details, "message": message, "status": "error"}
        return cls("error", status, body, delay)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Process the request normally, but answer only after ``seconds`` (real time)."""
        return cls("normal", delay=seconds)

    @classmethod
    def drop_before(cls, *, delay: float = 0.0) -> Fault:
        """Read the request, then drop the connection without processing it: nothing stored."""
        return cls("drop_before", delay=delay)

    @classmethod
    def drop_after(cls, *, delay: float = 0.0) -> Fault:
        """Process the request (an upload *is* stored), then drop the connection unanswered."""
        return cls("drop_after", delay=delay)


@dataclass(slots=True)
class FaultScript:
    """Faults for the next Attachments API requests that match; None in ``faults``: no fault.

    A request matches when its method, module (case-insensitively) and record id match those
    given (None matches any) and, with ``from_call``, when it is at least that call number: the
    count, from 1, of Attachments API requests with that method (of any method when ``method``
    is None).
    """

    faults: deque[Fault | None]
    method: str | None = "POST"
    module: str | None = None
    record_id: str | None = None
    from_call: int | None = None

    def matches(self, method: str, module: str, record_id: str, number: int) -> bool:
        """Whether this request gets the next fault."""
        return (
            (self.method is None or self.method == method)
            and (self.module is None or self.module.lower() == module.lower())
            and (self.record_id is None or self.record_id == record_id)
            and (self.from_call is None or number >= self.from_call)
        )


class ConnectionDropped(httpx.RemoteProtocolError):
    """The emulator dropped the connection, seen in process (``httpx.ASGITransport``).

    Over a socket the client sees the socket closed with no answer; in process there is no
    socket, so the app raises this, which the transport hands to the client as it is: the
    transport error a real drop causes.
    """


def _transport_of(send: Send) -> Any:
    # uvicorn's ``send`` is a method of an object holding the connection's transport; hypercorn's
    # leads, through the protocol's ``send`` methods, to its TCP server's stream writer. ASGI has
    # no way to drop a connection without answering, and raising from the app answers 500.
    obj: Any = send
    for _ in range(6):
        owner = getattr(obj, "__self__", None)
        if owner is None:
            return None
        for name in ("transport", "writer"):
            found = getattr(owner, name, None)
            if isinstance(found, asyncio.StreamWriter):
                found = found.transport
            if found is not None and callable(getattr(found, "abort", None)):
                return found
        obj = getattr(owner, "send", None)
    return None


async def _drop(receive: Receive, send: Send) -> None:
    transport = _transport_of(send)
    if transport is None:
        raise ConnectionDropped("the emulator dropped the connection without answering")
    transport.abort()
    # Wait until the server has seen the connection go, so that it neither logs an unfinished
    # answer nor tries to send a 500 down the dead socket.
    try:
        async with asyncio.timeout(2.0):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass


# -- attachments -------------------------------------------------------------------------------


@dataclass(slots=True)
class StoredAttachment:
    """One attachment the emulator stored: a ledger entry (``ZohoEmulator.uploads``)."""

    id: str
    module: str
    record_id: str
    file_name: str
    size: int
    sha256: str
    created_at: float  # on the emulator's clock
    content_type: str = "application/octet-stream"
    content: bytes = field(default=b"", repr=False)
    link_url: str | None = None  # set for a link (``attachmentUrl``), None for a file
    file_id: str | None = None
    deleted_at: float | None = None
    sequence: int = 0  # the order of storing, for newest-first lists

    @property
    def created_time(self) -> str:
        """``created_at`` as Zoho writes it."""
        return iso(self.created_at)

    @property
    def is_link(self) -> bool:
        """Whether it is a link rather than a file."""
        return self.link_url is not None

    @property
    def live(self) -> bool:
        """Whether it has not been deleted."""
        return self.deleted_at is None


@dataclass(slots=True)
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    size: int = 0
    chunks: list[bytes] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)


class _StreamingForm:
    """A multipart/form-data body, parsed as it arrives.

    The ``file`` part is counted and hashed, and held only while within ``limit``; other fields
    are kept as text, each at most ``MAX_FIELD`` bytes.
    """

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.files: list[_Part] = []
        self.too_large = False  # the file went over ``limit``
        self.broken = False  # not valid multipart, or a field over MAX_FIELD
        self.complete = False  # the closing boundary was seen
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        self._parser: MultipartParser | None = None
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError:  # a boundary longer than multipart allows
            self.broken = True

    def write(self, chunk: bytes) -> None:
        """Feed the next bytes of the body (ignored once it is known to be broken)."""
        if self.broken or self._parser is None:
            return
        try:
            self._parser.write(chunk)
        except FormParserError:
            self.broken = True

    def _begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._part.filename = None if filename is None else filename.decode("utf-8", "replace")
        kind, _ = parse_options_header(self._headers.get("content-type", b""))
        self._part.content_type = kind.decode("latin-1")

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        chunk = data[start:end]
        part.size += len(chunk)
        if part.name == "file":
            part.digest.update(chunk)
            if part.size > self.limit:
                self.too_large = True
                part.chunks.clear()  # never hold more than the limit
            elif not self.too_large:
                part.chunks.append(bytes(chunk))
        elif part.size > MAX_FIELD:
            self.broken = True
        else:
            part.chunks.append(bytes(chunk))

    def _part_end(self) -> None:
        part = self._part
        if part.name == "file":
            self.files.append(part)
        elif part.name:
            self.fields[part.name] = b"".join(part.chunks).decode("utf-8", "replace")

    def _end(self) -> None:
        self.complete = True


@dataclass(frozen=True, slots=True)
class _PageToken:
    module: str
    record_id: str
    after: int  # the sequence of the last attachment listed
    page: int
    expires_at: float


# -- the app -----------------------------------------------------------------------------------


class ZohoEmulator:
    """The accounts server and the CRM API in one ASGI app; see the module docstring.

    Every option has a default, so ``ZohoEmulator(api_domain=...)`` serves the real paths with
    Zoho's rules: the v1 upload rule on, 20 MiB files, every numeric record id existing.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        api_domain: str = "http://zoho-api.test",
        client_id: str = "1000.EMULATORCLIENT",
        client_secret: str = "emulator-client-secret",
        token_lifetime: float = HOUR,
        refresh_limit: int = 10,
        refresh_window: float = 600.0,
        max_access_tokens: int = 10,
        scopes: Sequence[str] = DEFAULT_SCOPES,
        max_upload_bytes: int = BLOG_LIMIT,
        records: Mapping[str, Iterable[int | str]] | None = None,
        custom_modules: Sequence[str] = (),
        limit_clock: Callable[[], float] | None = None,
        upload_limit: int | None = 60,
        upload_window: float = 60.0,
        block_seconds: float = 300.0,
        daily_credits: int | None = None,
        concurrency_limit: int | None = None,
        rate_limit_code: str = "TOO_MANY_REQUESTS",
    ) -> None:
        self.clock = clock
        self.api_domain = api_domain.rstrip("/")
        self.accounts = Accounts(
            client_id=client_id,
            client_secret=client_secret,
            token_lifetime=token_lifetime,
            refresh_limit=refresh_limit,
            refresh_window=refresh_window,
            max_access_tokens=max_access_tokens,
            scopes=scopes,
        )
        self.refresh_token = self.accounts.new_refresh_token()  # one ready for tests
        self.notifications = Notifications()
        self.limits = Limits(
            clock=clock if limit_clock is None else limit_clock,
            upload_limit=upload_limit,
            upload_window=upload_window,
            block_seconds=block_seconds,
            daily_credits=daily_credits,
            concurrency_limit=concurrency_limit,
        )
        self.rate_limit_code = rate_limit_code
        self.max_upload_bytes = max_upload_bytes
        self.modules: dict[str, str] = {
            m.lower(): m for m in (*ATTACHMENT_MODULES, *custom_modules)
        }  # lower-case name -> API name
        # None: every positive numeric id exists; else module (lower-case) -> the ids that do.
        self.records: dict[str, set[str]] | None = None
        if records is not None:
            self.records = {}
            for module, ids in records.items():
                for record_id in ids:
                    self.add_record(module, record_id)
        self.uploads: list[StoredAttachment] = []  # the ledger: every attachment ever stored
        self.attachments: dict[str, StoredAttachment] = {}  # the live ones, by id
        self.scripts: list[FaultScript] = []
        self.calls: list[Call] = []
        self.routes: list[Route] = []
        self._page_tokens: dict[str, _PageToken] = {}
        self._numbers: dict[str | None, int] = {}  # Attachments API requests, by method and all
        # Ids like Zoho's (19 digits), from a random base so that two runs do not share them.
        self._id_base = 5_725_767_000_000_000_000 + secrets.randbelow(10**11) * 10**6
        self.add_route(("POST",), r"/oauth/v2/token", self._token)
        self.add_route(("POST",), r"/oauth/v2/token/revoke", self._revoke)
        watch = r"/crm/v(\d+)/actions/watch"
        self.add_route(("POST", "PUT", "PATCH"), watch, self._watch_write)
        self.add_route(("GET",), watch, self._watch_list)
        self.add_route(("DELETE",), watch, self._watch_delete)
        self.add_route(("POST",), _ATTACHMENTS, self._faulty(self._upload))
        self.add_route(("GET",), _ATTACHMENTS, self._faulty(self._list))
        self.add_route(("DELETE",), _ATTACHMENTS, self._faulty(self._delete_many))
        self.add_route(("GET",), _ATTACHMENTS + r"/([^/]+)", self._faulty(self._download))
        self.add_route(("DELETE",), _ATTACHMENTS + r"/([^/]+)", self._faulty(self._delete_one))

    # -- for tests ---------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The one client the accounts server knows."""
        return self.accounts.client_id

    @property
    def client_secret(self) -> str:
        """That client's secret."""
        return self.accounts.client_secret

    @property
    def channels(self) -> Mapping[int, Channel]:
        """Every channel subscribed so far, live or expired, by id."""
        return self.notifications.channels

    def channel(self, channel_id: int | str) -> Channel | None:
        """A live channel, or None when it is unknown or expired."""
        return self.notifications.live(int(channel_id), self.clock())

    def count(self, method: str, path: str) -> int:
        """How many requests of ``method`` to ``path`` were answered."""
        return sum(1 for c in self.calls if c.method == method and c.path == path)

    # -- for tests: attachments, limits, faults ----------------------------------------------

    @property
    def upload_times(self) -> list[float]:
        """When each upload the limits admitted arrived, on the limit clock."""
        return self.limits.upload_times

    @property
    def block_events(self) -> list[Block]:
        """Every block the v1 upload rule triggered, on the limit clock."""
        return self.limits.block_events

    @property
    def blocked_count(self) -> int:
        """How many blocks the v1 upload rule triggered."""
        return len(self.limits.block_events)

    @property
    def peak_in_flight(self) -> int:
        """The most API requests ever handled at once."""
        return self.limits.peak_in_flight

    def stored(
        self, module: str | None = None, record_id: int | str | None = None
    ) -> list[StoredAttachment]:
        """The live attachments, of one module and record when given, oldest first."""
        return [
            a
            for a in self.attachments.values()
            if (module is None or a.module.lower() == module.lower())
            and (record_id is None or a.record_id == str(record_id))
        ]

    def module_name(self, name: str) -> str | None:
        """The API name of a module that takes attachments, or None (Zoho's INVALID_MODULE)."""
        known = self.modules.get(name.lower())
        if known is None and _CUSTOM_MODULE.fullmatch(name):
            return name
        return known

    def add_record(self, module: str, record_id: int | str) -> None:
        """Make a record exist (only needed when ``records`` restricts them)."""
        if self.records is not None:
            self.records.setdefault(module.lower(), set()).add(str(record_id))

    def record_exists(self, module: str, record_id: str) -> bool:
        """Whether the record exists: any positive 64-bit id, or one of ``records``."""
        if not (record_id.isascii() and record_id.isdigit() and 0 < int(record_id) < 2**63):
            return False
        return self.records is None or record_id in self.records.get(module.lower(), set())

    def inject(
        self,
        *faults: Fault | None,
        method: str | None = "POST",
        module: str | None = None,
        record_id: int | str | None = None,
        call: int | None = None,
    ) -> FaultScript:
        """Give the next matching Attachments API requests ``faults``, in order.

        A None among them lets that request through untouched. Requests match on ``method``
        (None: any), ``module``, ``record_id`` and, with ``call``, from that call number on (the
        count from 1 of Attachments API requests with ``method``); the first script that matches
        a request gives it its fault. ``inject(Fault.drop_after(), call=3)``: the third upload is
        stored and its connection dropped.
        """
        script = FaultScript(
            deque(faults),
            method=method,
            module=module,
            record_id=None if record_id is None else str(record_id),
            from_call=call,
        )
        self.scripts.append(script)
        return script

    def clear_faults(self) -> None:
        """Forget every fault not yet given."""
        self.scripts.clear()

    def _fault_for(self, request: Request) -> Fault | None:
        method = request.method
        numbers = self._numbers
        numbers[method] = numbers.get(method, 0) + 1
        numbers[None] = numbers.get(None, 0) + 1
        _, module, record_id, *_ = request.params
        for script in self.scripts:
            number = numbers.get(script.method, 0)
            if script.matches(method, module, record_id, number):
                fault = script.faults.popleft()
                if not script.faults:
                    self.scripts.remove(script)
                return fault
        return None

    def notification(
        self,
        channel_id: int | str,
        *,
        ids: Sequence[str],
        operation: str = "update",
        module: str | None = None,
        affected_fields: Sequence[str] = (),
        server_time: float | None = None,
    ) -> dict[str, Any]:
        """The body Zoho would POST to the channel's ``notify_url`` for a change of ``ids``.

        ``operation`` is ``insert``, ``update`` or ``delete`` (as in callbacks); ``module``
        defaults to the channel's first. Raises ``LookupError`` when no live channel would send
        it (unknown, expired, or not subscribed to that module and operation), as Zoho would not.
        """
        channel = self.channel(channel_id)
        if channel is None:
            raise LookupError(f"no live channel {channel_id}: Zoho would notify nobody")
        module = module or channel.modules[0]
        event_op = CALLBACK_OPERATIONS.get(operation)
        if event_op is None:
            raise ValueError(f"operation {operation!r}: expected insert, update or delete")
        if not channel.subscribed(module, event_op):
            raise LookupError(f"channel {channel_id} is not subscribed to {module}.{event_op}")
        now = self.clock() if server_time is None else server_time
        return {
            "server_time": int(now * 1000),
            "query_params": dict(parse_qsl(urlsplit(channel.notify_url).query)),
            "module": module,
            "resource_uri": f"{self.api_domain}/crm/v{channel.version}/{module}",
            "ids": [str(i) for i in ids],
            "affected_fields": (
                [{str(i): list(affected_fields)} for i in ids]
                if operation == "update" and affected_fields
                else []
            ),
            "operation": operation,
            "channel_id": str(channel.channel_id),  # a string in the docs' callback samples
            "token": channel.token,
        }

    async def notify(
        self, http: httpx.AsyncClient, channel_id: int | str, **kwargs: Any
    ) -> httpx.Response:
        """POST ``notification(channel_id, **kwargs)`` to the channel's ``notify_url``."""
        body = self.notification(channel_id, **kwargs)
        channel = self.notifications.channels[int(channel_id)]
        return await http.post(
            channel.notify_url,
            content=orjson.dumps(body),
            headers={"content-type": "application/json"},
        )

    # -- ASGI --------------------------------------------------------------------------------

    def add_route(self, methods: Sequence[str], pattern: str, handler: Handler) -> None:
        """Answer ``methods`` on paths fully matching ``pattern`` with ``handler``."""
        self.routes.append(Route(frozenset(methods), re.compile(pattern), handler))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method = str(scope["method"]).upper()
        path = str(scope["path"])
        query: dict[str, str] = {}
        for key, value in parse_qsl(bytes(scope.get("query_string", b"")).decode("latin-1")):
            query.setdefault(key, value)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        api = path.startswith("/crm/")
        limits = self.limits
        if api:
            limits.in_flight += 1
            limits.peak_in_flight = max(limits.peak_in_flight, limits.in_flight)
        try:
            response = await self._route(method, path, query, headers, receive)
            if response.delay > 0:
                await asyncio.sleep(response.delay)
            status = 0 if response.drop else response.status
            self.calls.append(Call(self.clock(), method, path, status, limits.clock()))
            if response.drop:
                await _drop(receive, send)
                return
            start_headers = [(b"content-length", str(len(response.body)).encode())]
            if response.status != 204:
                start_headers.append((b"content-type", response.content_type.encode()))
            start_headers += [(k.encode(), v.encode("latin-1")) for k, v in response.headers]
            remaining = limits.credits_remaining() if api else None
            if (
                remaining is not None
                and limits.daily_credits
                and remaining * 2 <= limits.daily_credits
            ):
                # Zoho adds it once half of the 24-hour credits are used.
                start_headers.append((b"x-api-credits-remaining", str(remaining).encode()))
            await send(
                {"type": "http.response.start", "status": response.status, "headers": start_headers}
            )
            await send({"type": "http.response.body", "body": response.body})
        finally:
            if api:
                limits.in_flight -= 1

    async def _route(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        receive: Receive,
    ) -> Response:
        allowed = False
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            allowed = True
            if method in route.methods:
                request = Request(method, path, query, headers, match.groups(), receive)
                return await route.handler(request)
        if allowed:
            return _request_error(
                405, "METHOD_NOT_ALLOWED", "The http request method type is not a valid one"
            )
        return _request_error(404, "INVALID_URL_PATTERN", URL_PATTERN_MESSAGE)

    # -- accounts handlers -------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        params = await request.params_in_query_or_form()
        accounts = self.accounts
        now = self.clock()
        grant_type = params.get("grant_type", "")
        if grant_type not in ("refresh_token", "authorization_code"):
            return Response.json(200, {"error": "unsupported_grant_type"})
        if params.get("client_id") != accounts.client_id:
            return Response.json(200, {"error": "invalid_client"})
        if params.get("client_secret") != accounts.client_secret:
            return Response.json(200, {"error": "invalid_client_secret"})
        if grant_type == "authorization_code":
            expires = accounts.codes.pop(params.get("code", ""), None)
            if expires is None or now >= expires:
                return Response.json(200, {"error": "invalid_code"})
            grant = accounts.grants[accounts.new_refresh_token()]
            return Response.json(200, self._token_body(grant, now, refresh=True))
        grant_or_none = accounts.grants.get(params.get("refresh_token", ""))
        if grant_or_none is None or grant_or_none.revoked:
            return Response.json(200, {"error": "invalid_code"})
        grant = grant_or_none
        while grant.refreshes and grant.refreshes[0] <= now - accounts.refresh_window:
            grant.refreshes.popleft()
        if len(grant.refreshes) >= accounts.refresh_limit:
            denied = {"error_description": TOO_MANY, "error": "Access Denied", "status": "failure"}
            return Response.json(400, denied)
        grant.refreshes.append(now)
        accounts.refreshes += 1
        return Response.json(200, self._token_body(grant, now, refresh=False))

    def _token_body(self, grant: Grant, now: float, *, refresh: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"access_token": self.accounts.issue(grant, now)}
        if refresh:
            body["refresh_token"] = grant.refresh_token
        body.update(
            api_domain=self.api_domain,
            token_type="Bearer",
            expires_in=int(self.accounts.token_lifetime),
        )
        return body

    async def _revoke(self, request: Request) -> Response:
        params = await request.params_in_query_or_form()
        grant = self.accounts.grants.get(params.get("token", ""))
        if grant is None:
            return Response.json(200, {"error": "invalid_token"})
        grant.revoked = True
        return Response.json(200, {"status": "success"})

    # -- API handlers ------------------------------------------------------------------------

    def authorize(self, request: Request) -> Response | None:
        """None when the request carries a valid access token, else the 401 Zoho would send."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Zoho-oauthtoken" or not token.strip():
            return Response.json(
                401,
                {
                    "code": "AUTHENTICATION_FAILURE",
                    "details": {},
                    "message": "Authentication failed",
                    "status": "error",
                },
            )
        if not self.accounts.valid(token.strip(), self.clock()):
            return Response.json(
                401,
                {
                    "code": "INVALID_TOKEN",
                    "details": {},
                    "message": "invalid oauth token",
                    "status": "error",
                },
            )
        return None

    def admit(self, request: Request, *, upload: bool = False) -> Response | None:
        """None when an API request may proceed: a valid token, and within the limits."""
        refused = self.authorize(request)
        if refused is not None:
            return refused
        if not self.limits.admit(upload=upload):
            return self._rate_limited()
        return None

    def _rate_limited(self) -> Response:
        # No Retry-After: Zoho documents none.
        return _request_error(429, self.rate_limit_code, RATE_LIMIT_MESSAGE)

    async def _watch_write(self, request: Request) -> Response:
        refused = self.admit(request)
        if refused is not None:
            return refused
        version = int(request.params[0])
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _request_error(400, "INVALID_DATA", "body is not a valid JSON")
        items = data.get("watch") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            return _request_error(
                400, "MANDATORY_NOT_FOUND", "required field not found", api_name="watch"
            )
        if len(items) > MAX_CHANNELS:
            return _request_error(
                400,
                "LIMIT_EXCEEDED",
                f"at most {MAX_CHANNELS} channels per request",
                api_name="watch",
                limit=MAX_CHANNELS,
            )
        now = self.clock()
        seen: set[int] = set()
        results = []
        for item in items:
            try:
                channel = self._apply(request.method, item, version, now, seen)
            except _Refused as exc:
                results.append(exc.item)
                continue
            results.append(
                {
                    "code": "SUCCESS",
                    "details": {"events": self._module_entries(channel)},
                    "message": (
                        "Successfully subscribed for actions-watch of the given module"
                        if request.method == "POST"
                        else "Successfully updated the subscribe details"
                    ),
                    "status": "success",
                }
            )
        return Response.json(_status(results), {"watch": results})

    def _apply(self, method: str, item: Any, version: int, now: float, seen: set[int]) -> Channel:
        if not isinstance(item, dict):
            raise _Refused("INVALID_DATA", "invalid data")
        channel_id = _channel_id(item.get("channel_id"))
        if channel_id in seen:
            raise _Refused("DUPLICATE_DATA", "duplicate data", api_name="channel_id")
        seen.add(channel_id)
        store = self.notifications
        current = store.live(channel_id, now)
        if method != "POST" and current is None:
            raise _Refused(
                "INVALID_DATA",
                "the given channel is not subscribed",
                api_name="channel_id",
                channel_id=channel_id,
            )
        if method == "PATCH" and current is not None:
            channel = self._patched(current, item, version, now)
        else:
            channel = Channel(
                channel_id=channel_id,
                events=_events(item.get("events"), required=True),
                notify_url=_notify_url(item.get("notify_url")),
                token=_token(item.get("token")),
                expires_at=_expiry(item.get("channel_expiry"), version, now),
                version=version,
                return_affected_field_values=bool(item.get("return_affected_field_values")),
                notify_on_related_action=bool(item.get("notify_on_related_action", True)),
                notification_condition=item.get("notification_condition"),
            )
            if method == "POST" and current is not None:
                # Subscribing a live channel again adds its events and renews it.
                merged = tuple(dict.fromkeys(current.events + channel.events))
                channel = replace(channel, events=merged)
        if not channel.events:
            del store.channels[channel_id]
        else:
            store.channels[channel_id] = channel
        return channel

    def _patched(self, current: Channel, item: dict[str, Any], version: int, now: float) -> Channel:
        changes: dict[str, Any] = {}
        if "events" in item:
            events = _events(item["events"], required=True)
            if item.get("_delete_events") is True:
                changes["events"] = tuple(e for e in current.events if e not in events)
            else:
                changes["events"] = tuple(dict.fromkeys(current.events + events))
        if "notify_url" in item:
            changes["notify_url"] = _notify_url(item["notify_url"])
        if "token" in item:
            changes["token"] = _token(item["token"])
        if "channel_expiry" in item:
            changes["expires_at"] = _expiry(item["channel_expiry"], version, now)
        for key in ("return_affected_field_values", "notify_on_related_action"):
            if key in item:
                changes[key] = bool(item[key])
        if "notification_condition" in item:
            changes["notification_condition"] = item["notification_condition"]
        return replace(current, **changes)

    def _module_entries(self, channel: Channel) -> list[dict[str, Any]]:
        return [
            {
                "channel_expiry": iso(channel.expires_at),
                "resource_uri": f"{self.api_domain}/crm/v{channel.version}/{module}",
                "resource_id": _module_id(module),
                "resource_name": module,
                "channel_id": channel.channel_id,
            }
            for module in channel.modules
        ]

    async def _watch_list(self, request: Request) -> Response:
        refused = self.admit(request)
        if refused is not None:
            return refused
        now = self.clock()
        wanted = request.query.get("channel_id")
        module = request.query.get("module")
        entries = []
        for channel in self.notifications.channels.values():
            if not channel.live(now) or (wanted and str(channel.channel_id) != wanted):
                continue
            for entry in self._module_entries(channel):
                if module and entry["resource_name"] != module:
                    continue
                name = entry["resource_name"]
                entries.append(
                    {
                        **entry,
                        "events": [e for e in channel.events if e.startswith(f"{name}.")],
                        "notify_url": channel.notify_url,
                        "token": channel.token,
                        "return_affected_field_values": channel.return_affected_field_values,
                        "notify_on_related_action": channel.notify_on_related_action,
                    }
                )
        if not entries:
            return Response(204)
        return Response.json(200, {"watch": entries})

    async def _watch_delete(self, request: Request) -> Response:
        refused = self.admit(request)
        if refused is not None:
            return refused
        raw = request.query.get("channel_ids", "")
        ids = [part.strip() for part in raw.split(",") if part.strip()]
        if not ids:
            return _request_error(
                400, "REQUIRED_PARAM_MISSING", "required param not found", param="channel_ids"
            )
        now = self.clock()
        results = []
        for part in ids:
            channel = self.notifications.live(int(part), now) if part.isdigit() else None
            if channel is None:
                results.append(
                    _Refused("INVALID_DATA", "invalid data", api_name="channel_ids", id=part).item
                )
                continue
            del self.notifications.channels[channel.channel_id]
            results.append(
                {
                    "code": "SUCCESS",
                    "details": {"events": self._module_entries(channel)},
                    "message": "Successfully unsubscribed from actions-watch of the given module",
                    "status": "success",
                }
            )
        return Response.json(_status(results), {"watch": results})

    # -- Attachments API handlers ------------------------------------------------------------

    def _faulty(self, handler: Handler) -> Handler:
        """``handler``, with the faults scripted for the request applied around it."""

        async def faulty(request: Request) -> Response:
            fault = self._fault_for(request)
            if fault is None:
                return await handler(request)
            if fault.kind in ("error", "drop_before"):
                await _drain(request)  # the client sent it all: only the answer goes missing
                if fault.kind == "drop_before":
                    response = Response(0, drop=True)
                else:
                    response = self._fault_response(fault)
            else:
                response = await handler(request)
                if fault.kind == "drop_after":
                    response = replace(response, drop=True)
            return replace(response, delay=response.delay + fault.delay)

        return faulty

    def _fault_response(self, fault: Fault) -> Response:
        if fault.body is not None:
            return Response.json(fault.status, fault.body)
        if fault.status == 429:
            return self._rate_limited()
        code, message = _DEFAULT_ERRORS[fault.status]
        return _request_error(fault.status, code, message)

    def _check(self, request: Request, operation: str, *, upload: bool = False) -> Response | str:
        """The module's API name when the request may go on, else Zoho's refusal."""
        version, name, record_id = request.params[:3]
        if float(version) < 2:
            # v1 lived elsewhere (/crm/private/...) and is gone.
            return _request_error(404, "INVALID_URL_PATTERN", URL_PATTERN_MESSAGE)
        refused = self.admit(request, upload=upload)
        if refused is not None:
            return refused
        module = self.module_name(name)
        if module is None:
            return _request_error(
                400, "INVALID_MODULE", INVALID_MODULE_MESSAGE, resource_path_index=0
            )
        if not _scope_allows(self._scopes(request), operation):
            return _request_error(401, "OAUTH_SCOPE_MISMATCH", "required oauth scope is missing")
        if not self.record_exists(module, record_id):
            return _request_error(
                400, "INVALID_DATA", INVALID_RECORD_MESSAGE, resource_path_index=1
            )
        return module

    def _scopes(self, request: Request) -> frozenset[str]:
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        return self.accounts.scopes_of(token)

    async def _upload(self, request: Request) -> Response:
        module = self._check(request, "create", upload=True)
        if isinstance(module, Response):
            await _drain(request)
            return module
        record_id = request.params[2]
        fields = dict(request.query)  # the SDK sends a link's attachmentUrl and title here
        form: _StreamingForm | None = None
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        if content_type == b"multipart/form-data" and options.get(b"boundary"):
            form = _StreamingForm(options[b"boundary"], self.max_upload_bytes)
            async for chunk in request.stream():
                form.write(chunk)
            if form.too_large:
                return _request_error(413, "FILE_SIZE_MORE_THAN_ALLOWED_SIZE", TOO_LARGE_MESSAGE)
            if form.broken or not form.complete:
                return _request_error(400, "INVALID_DATA", INVALID_DATA_MESSAGE)
            fields.update(form.fields)
        elif content_type == b"application/x-www-form-urlencoded":
            body = await request.body()
            if len(body) > MAX_FIELD:
                return _request_error(400, "INVALID_DATA", INVALID_DATA_MESSAGE)
            fields.update(parse_qsl(body.decode("utf-8", "replace")))
        else:
            await _drain(request)
        files = [] if form is None else form.files
        link = fields.get("attachmentUrl")
        if files and link is not None:
            return _request_error(400, "INVALID_DATA", INVALID_DATA_MESSAGE)
        if len(files) > 1:
            return _request_error(400, "INVALID_DATA", INVALID_DATA_MESSAGE, param_name="file")
        if files:
            part = files[0]
            if not part.filename:
                return _request_error(400, "INVALID_DATA", INVALID_DATA_MESSAGE, param_name="file")
            stored = self._store(
                module,
                record_id,
                file_name=part.filename,
                content=b"".join(part.chunks),
                sha256=part.digest.hexdigest(),
                content_type=part.content_type or "application/octet-stream",
            )
        elif link is not None:
            url = urlsplit(link)
            if len(link) > MAX_LINK or url.scheme not in ("http", "https") or not url.netloc:
                return _request_error(
                    400, "INVALID_URL_PATTERN", "the given attachment URL is incorrect"
                )
            title = fields.get("title")
            if title is not None and not 1 <= len(title) <= MAX_TITLE:
                return _request_error(400, "INVALID_DATA", INVALID_DATA_MESSAGE, param_name="title")
            # Zoho names a link after the page's title; without fetching it, the URL will do.
            stored = self._store(module, record_id, file_name=title or link, link_url=link)
        else:
            return _request_error(400, "MANDATORY_NOT_FOUND", "required field not found")
        user = {"name": USER["name"], "id": USER["id"]}
        details = {
            "Modified_Time": stored.created_time,
            "Modified_By": user,
            "Created_Time": stored.created_time,
            "id": stored.id,
            "Created_By": user,
        }
        return Response.json(
            200,
            {
                "data": [
                    {
                        "code": "SUCCESS",
                        "details": details,
                        "message": "attachment uploaded successfully",
                        "status": "success",
                    }
                ]
            },
        )

    def _store(
        self,
        module: str,
        record_id: str,
        *,
        file_name: str,
        content: bytes = b"",
        sha256: str | None = None,
        content_type: str = "application/octet-stream",
        link_url: str | None = None,
    ) -> StoredAttachment:
        sequence = len(self.uploads) + 1
        stored = StoredAttachment(
            id=str(self._id_base + sequence),
            module=module,
            record_id=record_id,
            file_name=file_name,
            size=len(content),
            sha256=sha256 or hashlib.sha256(content).hexdigest(),
            created_at=self.clock(),
            content_type=content_type,
            content=content,
            link_url=link_url,
            file_id=None if link_url is not None else secrets.token_hex(32),
            sequence=sequence,
        )
        self.uploads.append(stored)
        self.attachments[stored.id] = stored
        return stored

    async def _list(self, request: Request) -> Response:
        module = self._check(request, "read")
        if isinstance(module, Response):
            return module
        record_id = request.params[2]
        query = request.query
        if not query.get("fields"):
            return _request_error(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                param_name="fields",
            )
        wanted = {f.strip() for f in query["fields"].split(",") if f.strip()} | {"id"}
        per_page = _positive(query.get("per_page", str(MAX_PER_PAGE)))
        if per_page is None or per_page > MAX_PER_PAGE:
            return _request_error(400, "INVALID_DATA", INVALID_DATA_MESSAGE, param_name="per_page")
        # Newest first: the order Zoho's UI shows them in.
        items = sorted(self.stored(module, record_id), key=lambda a: -a.sequence)
        if ids := query.get("ids"):
            chosen = {i.strip() for i in ids.split(",")}
            items = [a for a in items if a.id in chosen]
        now = self.clock()
        if token := query.get("page_token"):
            state = self._page_tokens.get(token)
            if (
                state is None
                or state.expires_at <= now
                or (state.module, state.record_id) != (module, record_id)
            ):
                return _request_error(
                    400, "INVALID_DATA", INVALID_DATA_MESSAGE, param_name="page_token"
                )
            page_number = state.page + 1
            # Resume after the last one listed, so that uploads meanwhile shift nothing.
            items = [a for a in items if a.sequence < state.after]
        else:
            page = _positive(query.get("page", "1"))
            if page is None:
                return _request_error(400, "INVALID_DATA", INVALID_DATA_MESSAGE, param_name="page")
            page_number = page
            items = items[(page - 1) * per_page :]
        shown, more = items[:per_page], len(items) > per_page
        next_token = expiry = None
        if more:
            next_token = secrets.token_urlsafe(24)
            self._page_tokens[next_token] = _PageToken(
                module, record_id, shown[-1].sequence, page_number, now + DAY
            )
            expiry = iso(now + DAY)
        data = [{k: v for k, v in self._entry(a).items() if k in wanted} for a in shown]
        info = {
            "per_page": per_page,
            "next_page_token": next_token,
            "count": len(shown),
            "page": page_number,
            "previous_page_token": None,
            "page_token_expiry": expiry,
            "more_records": more,
        }
        return Response.json(200, {"data": data, "info": info})

    def _entry(self, attachment: StoredAttachment) -> dict[str, Any]:
        user = dict(USER)
        entry: dict[str, Any] = {
            "Owner": user,
            "Modified_Time": attachment.created_time,
            "File_Name": attachment.file_name,
            "$field_states": None,
            "Created_Time": attachment.created_time,
            "Size": str(attachment.size),
            "Parent_Id": {
                "name": f"{attachment.module} {attachment.record_id}",
                "id": attachment.record_id,
            },
            "$editable": True,
            "$file_id": attachment.file_id,
            "$type": "Link URL" if attachment.is_link else "File",
            "$se_module": attachment.module,
            "Modified_By": user,
            "$state": "save",
            "id": attachment.id,
            "Created_By": user,
            "$sharing_permission": "full_access",
        }
        if attachment.is_link:
            entry["$link_url"] = attachment.link_url
        return entry

    def _attachment(
        self, module: str, record_id: str, attachment_id: str
    ) -> StoredAttachment | None:
        found = self.attachments.get(attachment_id)
        if found is None or found.module != module or found.record_id != record_id:
            return None
        return found

    async def _download(self, request: Request) -> Response:
        module = self._check(request, "read")
        if isinstance(module, Response):
            return module
        found = self._attachment(module, request.params[2], request.params[3])
        if found is None:
            return _request_error(404, "INVALID_DATA", "the id given seems to be invalid")
        if found.is_link:
            return _request_error(
                400, "DOWNLOAD_NOT_ALLOWED", "As it is a linked attachment, you can not download it"
            )
        return Response(
            200,
            found.content,
            content_type=found.content_type,
            headers=(("content-disposition", _disposition(found.file_name)),),
        )

    async def _delete_one(self, request: Request) -> Response:
        module = self._check(request, "delete")
        if isinstance(module, Response):
            return module
        found = self._attachment(module, request.params[2], request.params[3])
        if found is None:
            return _request_error(400, "INVALID_DATA", "record not deleted", resource_path_index=3)
        self._forget(found)
        return Response.json(200, {"data": [_deleted(found.id)]})

    async def _delete_many(self, request: Request) -> Response:
        module = self._check(request, "delete")
        if isinstance(module, Response):
            return module
        ids = [i.strip() for i in request.query.get("ids", "").split(",") if i.strip()]
        if not ids:
            return _request_error(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                param_name="ids",
            )
        results = []
        for attachment_id in ids:
            found = self._attachment(module, request.params[2], attachment_id)
            if found is None:
                results.append(
                    _Refused("INVALID_DATA", "record not deleted", id=attachment_id).item
                )
                continue
            self._forget(found)
            results.append(_deleted(found.id))
        return Response.json(_status(results), {"data": results})

    def _forget(self, attachment: StoredAttachment) -> None:
        attachment.deleted_at = self.clock()
        del self.attachments[attachment.id]


# -- validation of one watch item --------------------------------------------------------------


def _channel_id(value: Any) -> int:
    if value is None:
        raise _Refused("MANDATORY_NOT_FOUND", "required field not found", api_name="channel_id")
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit())
    ):
        raise _Refused(
            "INVALID_DATA", "invalid data", api_name="channel_id", expected_data_type="long"
        )
    return int(value)


def _events(value: Any, *, required: bool) -> tuple[str, ...]:
    if value is None or value == []:
        if required:
            raise _Refused("MANDATORY_NOT_FOUND", "required field not found", api_name="events")
        return ()
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise _Refused("INVALID_DATA", "invalid data", api_name="events")
    if len(value) > MAX_EVENTS:
        raise _Refused("LIMIT_EXCEEDED", "too many events", api_name="events", limit=MAX_EVENTS)
    for event in value:
        module, dot, operation = event.rpartition(".")
        if not dot or not _MODULE.fullmatch(module) or operation not in OPERATIONS:
            raise _Refused("INVALID_DATA", "invalid data", api_name="events", event=event)
    return tuple(dict.fromkeys(value))


def _notify_url(value: Any) -> str:
    if value is None:
        raise _Refused("MANDATORY_NOT_FOUND", "required field not found", api_name="notify_url")
    url = urlsplit(value) if isinstance(value, str) else None
    if url is None or url.scheme not in ("http", "https") or not url.netloc:
        raise _Refused("INVALID_DATA", "invalid data", api_name="notify_url")
    return str(value)


def _token(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TOKEN:
        raise _Refused("INVALID_DATA", "invalid data", api_name="token", maximum_length=MAX_TOKEN)
    return value


def _expiry(value: Any, version: int, now: float) -> float:
    if value is None:
        return now + HOUR
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise _Refused(
            "INVALID_DATA", "invalid data", api_name="channel_expiry", expected_data_type="datetime"
        )
    at = when.timestamp()
    if at <= now:
        raise _Refused("INVALID_DATA", "the expiry time is in the past", api_name="channel_expiry")
    # Zoho's documented rule, and a trap for clients: too far ahead quietly means one hour.
    if at - now > (WEEK if version >= 4 else DAY):
        return now + HOUR
    return at


def _request_error(status: int, code: str, message: str, **details: Any) -> Response:
    return Response.json(
        status, {"code": code, "details": details, "message": message, "status": "error"}
    )


def _status(results: Sequence[Mapping[str, Any]]) -> int:
    good = sum(1 for r in results if r["status"] == "success")
    if good == len(results):
        return 200
    return 207 if good else 400


def _module_id(module: str) -> str:
    # A stable, Zoho-looking id per module name.
    return str(5_725_767_000_000_000_000 + zlib.crc32(module.encode()))


def iso(at: float) -> str:
    """``at`` as Zoho writes date-times: ISO 8601, seconds, with a UTC offset."""
    return datetime.fromtimestamp(at, UTC).replace(microsecond=0).isoformat()


def _scope_allows(scopes: frozenset[str], operation: str) -> bool:
    # Zoho's scopes are case-insensitive; WRITE covering create and delete is an inference.
    wanted = {
        "zohocrm.modules.all",
        "zohocrm.modules.attachments.all",
        f"zohocrm.modules.attachments.{operation}",
    }
    if operation in ("create", "update", "delete"):
        wanted.add("zohocrm.modules.attachments.write")
    return not scopes.isdisjoint(wanted)


async def _drain(request: Request) -> None:
    # Read what is left of the body, so that the client gets the answer, not a broken pipe.
    async for _ in request.stream():
        pass


def _positive(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


def _disposition(file_name: str) -> str:
    if file_name.isascii() and '"' not in file_name and "\\" not in file_name:
        return f'attachment; filename="{file_name}"'
    return f"attachment; filename*=UTF-8''{quote(file_name, safe='')}"


def _deleted(attachment_id: str) -> dict[str, Any]:
    return {
        "code": "SUCCESS",
        "details": {"id": attachment_id},
        "message": "record deleted",
        "status": "success",
    }
