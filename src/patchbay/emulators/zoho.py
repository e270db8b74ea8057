"""A faithful local Zoho: the accounts server's token endpoint and the CRM notification API.

Built from the research notes (zoho.md section 4, items 1 and 5; webhooks.md 2.6) so that the
OAuth client and the channel renewal are tested against Zoho's behaviour, quirks included,
without a network:

- **Accounts** ``POST /oauth/v2/token``: parameters in the query *or* a form body (the docs show
  the first, Zoho's SDK sends the second); the refresh-token grant, plus the authorization-code
  grant and ``/oauth/v2/token/revoke`` for completeness. Refusals come as Zoho sends them:
  ``{"error": "invalid_code"}`` (and ``invalid_client``, ``invalid_client_secret``) with
  **HTTP 200**. More than 10 refreshes of one refresh token within 10 minutes get
  ``{"error": "Access Denied", "error_description": "You have made too many requests
  continuously..."}`` (HTTP 400: the status is not documented, the body is). Only the last 10
  access tokens of a refresh token stay valid; issuing an eleventh invalidates the oldest.
- **API** ``/crm/v{n}/actions/watch``: ``Authorization: Zoho-oauthtoken <token>`` is checked
  (401 ``INVALID_TOKEN`` for an unknown, expired or superseded token; 401
  ``AUTHENTICATION_FAILURE`` when the header is missing or uses another scheme). ``POST``
  subscribes or renews (events are added to a live channel), ``PUT`` replaces a live channel,
  ``PATCH`` changes the fields given (``_delete_events: true`` removes the events given),
  ``GET`` lists live channels (filters ``channel_id``, ``module``; 204 when none), ``DELETE
  ?channel_ids=`` unsubscribes. Validation: at most 50 channels per request and 50 events per
  channel, ``Module.create|edit|delete|all`` events, an http(s) ``notify_url``, a token of at most
  50 characters, and ``channel_expiry`` as Zoho documents it: missing, or more than a week ahead
  (a day before API v4), means **one hour**. An expiry in the past, or without a UTC offset, is
  refused with ``INVALID_DATA`` (an inference: the docs do not say). Each item of an answer has
  ``code``/``message``/``status`` and ``details.events`` (one per module with
  ``channel_expiry``, ``resource_uri``, ``resource_id``, ``resource_name``, ``channel_id``); the
  answer is 200 when every item succeeded, 207 for a mix, 400 when none did. An expired channel is
  gone, as at Zoho, but stays in ``channels`` for tests to inspect.
- ``notification()`` builds the body Zoho would POST to a channel's ``notify_url`` and
  ``notify()`` posts it through any ``httpx.AsyncClient``, so the gateway's receiver can be tested
  end to end.

Design: a plain ASGI callable (no framework is installed, and the emulator needs only routing)
with an injected clock. Routes are a table of ``(method, path pattern, handler)``, and state lives
in one object per API (``Accounts``, ``Notifications``), so the Attachments API can later be
added to the same app as another state object and a few more ``add_route`` calls; a handler
reads the body only when it wants it (``await request.body()`` or ``request.stream()``), so an
upload handler can count bytes and stop at a limit.
"""

from __future__ import annotations

import re
import secrets
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson

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
    """One request the emulator answered, kept for tests (``ZohoEmulator.calls``)."""

    at: float
    method: str
    path: str
    status: int


# -- accounts ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Grant:
    """One refresh token's state: its last refreshes and its still-valid access tokens."""

    refresh_token: str
    refreshes: deque[float] = field(default_factory=deque)
    access_tokens: deque[str] = field(default_factory=deque)
    revoked: bool = False


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
    ) -> None:
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

    def new_refresh_token(self) -> str:
        """Create a refresh token, as a grant would."""
        value = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.grants[value] = Grant(value)
        return value

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


# -- the app -----------------------------------------------------------------------------------


class ZohoEmulator:
    """The accounts server and the CRM API in one ASGI app; see the module docstring."""

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
        )
        self.refresh_token = self.accounts.new_refresh_token()  # one ready for tests
        self.notifications = Notifications()
        self.calls: list[Call] = []
        self.routes: list[Route] = []
        self.add_route(("POST",), r"/oauth/v2/token", self._token)
        self.add_route(("POST",), r"/oauth/v2/token/revoke", self._revoke)
        watch = r"/crm/v(\d+)/actions/watch"
        self.add_route(("POST", "PUT", "PATCH"), watch, self._watch_write)
        self.add_route(("GET",), watch, self._watch_list)
        self.add_route(("DELETE",), watch, self._watch_delete)

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
        response = Response.json(404, {"code": "INVALID_URL_PATTERN", "status": "error"})
        allowed = False
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            allowed = True
            if method in route.methods:
                request = Request(method, path, query, headers, match.groups(), receive)
                response = await route.handler(request)
                break
        else:
            if allowed:
                response = Response.json(405, {"code": "METHOD_NOT_ALLOWED", "status": "error"})
        self.calls.append(Call(self.clock(), method, path, response.status))
        start_headers = [(b"content-length", str(len(response.body)).encode())]
        if response.body:
            start_headers.append((b"content-type", response.content_type.encode()))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": start_headers}
        )
        await send({"type": "http.response.body", "body": response.body})

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

    async def _watch_write(self, request: Request) -> Response:
        refused = self.authorize(request)
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
        refused = self.authorize(request)
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
        refused = self.authorize(request)
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
