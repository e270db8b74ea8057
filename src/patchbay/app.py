"""The application: DBSlayer's endpoints on a lean path, Patchbay's own beside them.

``App.respond`` answers one request from its method, path, query string, ``Authorization`` header
and socket addresses; ``server.py`` calls it directly, and ``App`` is also an ASGI callable (for
test clients and other servers). No framework sits on the ``/db`` path: a framework layer costs
18-21 % of throughput here (``python-stack-ceiling.md``). Patchbay's own endpoints
(``/v1/stats``, ``/livez``, ``/readyz``) use the one JSON error shape with real HTTP statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from patchbay.crm.client import CrmClient
from patchbay.crm.gateway import CrmGateway
from patchbay.errors import Forbidden, NotFound, PatchbayError, StoreUnavailable, Unauthorized
from patchbay.http import TEXT, Reply, Request, error_reply
from patchbay.jobs.retention import Retention
from patchbay.jobs.store import Store, connect
from patchbay.push.client import Sender
from patchbay.push.gateway import PushGateway
from patchbay.rollup import merge
from patchbay.settings import Settings, redact_url
from patchbay.sql import routes
from patchbay.sql.gateway import Database
from patchbay.stats import Stats
from patchbay.webhooks.routes import PREFIX as HOOKS_PREFIX
from patchbay.webhooks.service import Hooks

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = structlog.get_logger("patchbay")
JSON = b"application/json"
OPEN_PATHS = frozenset({"/livez", "/readyz"})
PUSH_BODY_LIMIT = 16 * 1024 * 1024  # 100,000 tokens of about 160 bytes, and the message
STATS_FILE = "PATCHBAY_STATS_FILE"  # set by `patchbay serve` for every worker it starts
PUBLISH_EVERY = 1.0  # seconds between two snapshots of a worker's counters, for /v1/stats


class App:
    """Patchbay as one ASGI callable."""

    def __init__(self, settings: Settings, *, shutdown: Callable[[], None] | None = None) -> None:
        self.settings = settings
        strict = settings.server.compat == "strict"
        self.databases = {db.name: Database(db, strict=strict) for db in settings.databases}
        self.stats = Stats(os.environ.get(STATS_FILE))
        self.started = time.time()
        self.dbslayer = routes.DBSlayer(
            self.databases,
            stats=self.stats,
            strict=strict,
            max_request_bytes=settings.server.max_request_bytes,
            args=redacted_args(sys.argv),
            shutdown=shutdown or request_shutdown,
        )
        self.token = settings.server.token.encode()
        self.networks = [
            ipaddress.ip_network(n, strict=False) for n in settings.server.allow_networks
        ]
        self.ready = False
        self._publisher: asyncio.Task[None] | None = None
        self.retention: Retention | None = None
        self.store: Store | None = None
        self.hooks: Hooks | None = None
        self.push: PushGateway | None = None
        self.crm: CrmGateway | None = None
        if settings.webhooks.sources or settings.push.service_account or settings.crm.configured:
            self.store = connect(settings.jobs_store_url())
        if self.store is not None and settings.webhooks.sources:
            self.hooks = Hooks(settings, self.store)
        if self.store is not None and settings.crm.configured:
            store = self.store
            self.crm = CrmGateway(
                settings.crm,
                store,
                Path(settings.server.state_dir) / "uploads",
                lambda: CrmClient(settings.crm, store=store),
                clock=time.time,
                lease=settings.jobs.lease,
                poll_interval=settings.jobs.poll_interval,
            )
        if self.store is not None and settings.push.service_account:
            self.push = PushGateway(
                self.store,
                lambda: Sender.from_settings(settings.push),
                clock=time.time,
                lease=settings.jobs.lease,
                poll_interval=settings.jobs.poll_interval,
                deadline=settings.push.deadline,
            )

    async def start(self) -> None:
        """Start the databases' health probes, open the job store, start the dispatcher."""
        for database in self.databases.values():
            database.start()
        if self.store is not None:
            try:
                await self.store.open()
            except StoreUnavailable as exc:
                # Intake answers 503 (providers retry) and the workers keep trying.
                log.error("job store unavailable at start", error=exc.message)
        if self.hooks is not None:
            await self.hooks.start()
        if self.push is not None:
            self.push.start()
        if self.crm is not None:
            self.crm.start()
        if self.settings.server.workers > 1:
            self._publisher = asyncio.create_task(self._publish())
        if self.store is not None and self.settings.jobs.retention_days:
            self.retention = Retention(self.store, self.settings.jobs.retention_days)
            self.retention.start()
        self.ready = True

    async def _publish(self) -> None:
        """Share this worker's counters with the others, for their ``/v1/stats``."""
        while True:
            try:
                self.stats.publish(orjson.dumps(self.worker_stats()))
            except ValueError as exc:  # too many databases or sources for one snapshot
                log.warning("stats snapshot not shared", error=str(exc))
            await asyncio.sleep(PUBLISH_EVERY)

    async def stop(self) -> None:
        """Stop the dispatcher, close every pool and store, release this process's stats slot."""
        self.ready = False
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self.hooks is not None:
            await self.hooks.stop(self.settings.server.drain_timeout / 2)
        if self.push is not None:
            await self.push.stop(self.settings.server.drain_timeout / 2)
        if self.crm is not None:
            await self.crm.stop(self.settings.server.drain_timeout / 2)
        if self.retention is not None:
            await self.retention.stop()
        if self.store is not None:
            await self.store.close()
        for database in self.databases.values():
            await database.close()
        self.stats.close()

    def body_limit(self, path: str) -> int | None:
        """The body limit of the endpoint at ``path``, when it has its own."""
        if self.hooks is not None and path.startswith(HOOKS_PREFIX):
            return self.hooks.receiver.body_limit(path)
        if self.push is not None and path == "/v1/push":
            return PUSH_BODY_LIMIT
        if self.crm is not None:
            return self.crm.body_limit(path)
        return None

    async def receive(self, request: Request) -> Reply:
        """Answer a request whose endpoint reads its headers and body (``/hooks/``, ``/v1/push``)."""
        began = time.perf_counter()
        path = request.path
        if path.startswith(HOOKS_PREFIX) and self.hooks is not None:
            # Providers send no Patchbay credentials: each source's signature guards it.
            reply = await self.hooks.receiver.handle(request)
        elif path == "/v1/push" or path.startswith("/v1/push/"):
            reply = await self._guarded(request, self.push.handle if self.push else None, "push")
        elif path.startswith("/v1/crm/"):
            reply = await self._guarded(request, self.crm.handle if self.crm else None, "crm")
        elif path.startswith("/crm/private/") and self.crm is not None:
            # Old clients send only their authtoken, which the endpoint itself checks.
            reply = await self.crm.legacy(request)
        else:
            reply = error_reply(NotFound(f"no endpoint {path}", path=path))
        self.stats.record(
            client_ip=request.peer or "",
            request=f"{request.method} {request.path} HTTP/1.1",
            status=reply.status,
            bytes_sent=len(reply.body),
            micros=int((time.perf_counter() - began) * 1e6),
            error=None,
        )
        return reply

    async def _guarded(
        self,
        request: Request,
        handle: Callable[[Request], Awaitable[Reply]] | None,
        section: str,
    ) -> Reply:
        """Patchbay's own API: the bearer token and allowed networks of the SQL endpoints."""
        denied = self._denied(
            request.headers.get("authorization", "").encode("latin-1"), request.peer
        )
        if denied == 401:
            return error_reply(Unauthorized("a bearer token is required"))
        if denied is not None:
            return error_reply(Forbidden("your network may not use this server"))
        if handle is None:
            return error_reply(
                NotFound(f"{section} is not configured (see [{section}] in the settings)")
            )
        return await handle(request)

    async def respond(
        self,
        method: str,
        path: str,
        query: bytes,
        authorization: bytes | None,
        peer: str | None,
        local: str | None,
    ) -> Reply:
        """Answer one HTTP request: the server layer's one entry point."""
        began = time.perf_counter()
        if path in routes.PATHS:
            if method not in ("GET", "POST"):
                reply = Reply(405, TEXT, b"Method Not Allowed")
            elif (denied := self._denied(authorization, peer)) is not None:
                body = b"Unauthorized" if denied == 401 else b"Forbidden"
                reply = Reply(denied, TEXT, body)
            else:
                reply = await self.dbslayer.handle(path, query, peer, local)
        else:
            reply = self._own(path, authorization, peer)
        self.stats.record(
            client_ip=peer or "",
            request=f"{method} {path}{'?' if query else ''}{query.decode('latin-1')} HTTP/1.0",
            status=reply.status,
            bytes_sent=len(reply.body),
            micros=int((time.perf_counter() - began) * 1e6),
            error=reply.error,
        )
        return reply

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point, for ASGI servers and test clients."""
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """ASGI lifespan: ``start`` and ``stop``."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI HTTP: a thin adapter over ``respond`` and ``receive``."""
        client = scope.get("client")
        server = scope.get("server")
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
        if scope["path"].startswith(HOOKS_PREFIX):
            reply = await self.receive(await _whole_request(scope, receive))
        else:
            reply = await self.respond(
                scope["method"],
                scope["path"],
                scope["query_string"],
                authorization,
                client[0] if client else None,
                server[0] if server else None,
            )
        headers = [
            (b"content-type", reply.content_type),
            (b"content-length", b"%d" % len(reply.body)),
            *reply.headers,
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    def _denied(self, authorization: bytes | None, peer: str | None) -> int | None:
        """401 without the bearer token, 403 from outside the allowed networks."""
        if self.token:
            given = authorization or b""
            if not _same(given[:7].lower() + given[7:], b"bearer " + self.token):
                return 401
        if self.networks and peer is not None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                return 403
            if not address.is_loopback and not any(address in n for n in self.networks):
                return 403
        return None

    def _own(self, path: str, authorization: bytes | None, peer: str | None) -> Reply:
        """Patchbay's own endpoints, with the one JSON error shape."""
        try:
            if path == "/livez":
                return Reply(200, JSON, b'{"status":"ok"}')
            if path == "/readyz":
                if not self.ready:
                    return Reply(503, JSON, b'{"status":"starting"}')
                return Reply(200, JSON, b'{"status":"ok"}')
            if path == "/v1/stats":
                denied = self._denied(authorization, peer)
                if denied == 401:
                    raise Unauthorized("a bearer token is required")
                if denied is not None:
                    raise Forbidden("your network may not use this server")
                return Reply(200, JSON, orjson.dumps(self.rich_stats()))
            if path.startswith("/v1/"):
                raise NotFound(f"no endpoint {path}", path=path)
        except PatchbayError as exc:
            return Reply(exc.status, JSON, orjson.dumps(exc.to_json()))
        return Reply(404, TEXT, b"Not Found")

    def rich_stats(self) -> dict[str, Any]:
        """Patchbay's own counters (``/v1/stats``), every worker's added up."""
        others = self.stats.snapshots()
        merged: dict[str, Any] = merge([self.worker_stats(), *(doc for _, doc in others)])
        merged["pid"] = os.getpid()  # the worker that answered
        merged["workers"] = [{"pid": os.getpid(), "snapshot_age_seconds": 0.0}] + [
            {"pid": doc.get("pid"), "snapshot_age_seconds": round(age, 3)} for age, doc in others
        ]
        return merged

    def worker_stats(self) -> dict[str, Any]:
        """The counters of the worker that runs this App, alone."""
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "pid": os.getpid(),
            "total_requests": self.stats.total_requests,
            "databases": {name: db.stats() for name, db in self.databases.items()},
            **({"webhooks": self.hooks.stats.summary()} if self.hooks is not None else {}),
            **({"push": self.push.stats()} if self.push is not None else {}),
            **({"crm": dict(self.crm.outcomes)} if self.crm is not None else {}),
        }


SECRET_FLAGS = ("--token",)


async def _whole_request(scope: Scope, receive: Receive) -> Request:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    client = scope.get("client")
    return Request(
        scope["method"],
        scope["path"],
        scope["query_string"],
        headers,
        b"".join(chunks),
        client[0] if client else None,
    )


def redacted_args(argv: list[str]) -> str:
    """The command line for ``/stats/args``, with passwords and tokens replaced by ``***``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            out.append(f"{flag}=***" if eq else arg)
            hide_next = not eq
            continue
        out.append(",".join(_redact_part(part) for part in arg.split(",")) if "://" in arg else arg)
    return " ".join(out)


def _redact_part(part: str) -> str:
    name, eq, url = part.partition("=")
    if eq and "://" in url and "://" not in name:
        return f"{name}={redact_url(url)}"
    return redact_url(part)


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def request_shutdown() -> None:
    """Ask the whole server (every worker) to stop gracefully, after this response is sent."""
    target = int(os.environ.get("PATCHBAY_SUPERVISOR_PID", os.getpid()))
    asyncio.get_running_loop().call_later(0.05, os.kill, target, signal.SIGTERM)


def create_app(settings: Settings) -> App:
    """Build the application from settings (an ASGI callable too)."""
    return App(settings)
