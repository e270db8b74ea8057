"""The push sender's HTTP seam: one ``request`` call, two implementations.

The sender's retry, classification and dead-token logic (``client.py``) needs only this of HTTP:
send a method, URL, body and headers with a time limit, and get back the status, the headers
(``Retry-After`` and ``Date`` are read case-insensitively), the body and the protocol spoken; or
``TransportFailure`` when no answer came (refused, reset, dropped, timed out). Everything else is
the transport's business, so each can use its library as it is fastest:

- ``HttpxTransport``: HTTP/2 (``[push] http2 = true``). httpcore multiplexes every request over
  *one* HTTP/2 connection per client and does not open a second one when the server's stream
  limit (100 at Google) is reached, so above 100 in flight it shards over
  ``ceil(concurrency / 100)`` clients, each request going to the least busy one. Against an
  ``https://`` base h2 is offered by ALPN; a plain ``http://`` base (the emulator) gets h2c with
  prior knowledge (``http1=False``). It also wraps a caller's ``httpx.AsyncClient`` (``http=``)
  or any ``httpx`` transport (``transport=``: ``ASGITransport`` to the emulator in tests,
  ``MockTransport``).
- ``AiohttpTransport``: HTTP/1.1 (``http2 = false``, the default). One ``aiohttp.ClientSession``
  whose connector keeps up to ``concurrency`` keep-alive connections. aiohttp parses HTTP in C
  and finds a free connection in O(1), where httpcore's HTTP/1.1 pool looks at every connection
  for every request (3-4 ms of CPU per request at 100 connections, against about 0.2 ms with
  aiohttp: docs/benchmarks.md, "Push out").

The sender bounds requests in flight itself (its semaphore); the pools here are sized to the
same ``concurrency`` so that they never queue a request the sender let through.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import aiohttp
import certifi
import httpx

from patchbay.settings import PushSettings

STREAMS_PER_CONNECTION: Final = 100  # what Google's front ends allow on one HTTP/2 connection
CONNECT_TIMEOUT: Final = 10.0  # seconds to open a connection, at most (and at most the timeout)
KEEPALIVE: Final = 30.0  # seconds an idle HTTP/1.1 connection is kept for the next request


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer as the sender reads it."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (httpx.Headers, aiohttp's CIMultiDictProxy)
    body: bytes
    http_version: str  # "HTTP/1.1", "HTTP/2"


class TransportFailure(Exception):
    """No answer: the connection failed, was dropped or timed out (the request may have arrived)."""


@runtime_checkable
class Transport(Protocol):
    """What the sender and the token source need of HTTP."""

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        limit: float,
    ) -> Reply:
        """Send one request; its answer, or ``TransportFailure`` when none came in ``limit`` s.

        The library enforces ``limit`` (seconds for the whole exchange), so that a connect
        timeout and a read timeout are told apart in the failure's text.
        """
        ...

    async def aclose(self) -> None:
        """Close the connections this transport opened."""
        ...


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT))


class HttpxTransport:
    """httpx clients (HTTP/2 shards, or one client on a given transport), least busy first.

    ``owned``: whether ``aclose`` closes the clients (not when they are the caller's).
    """

    def __init__(self, clients: Sequence[httpx.AsyncClient], *, owned: bool = True) -> None:
        """Use ``clients``; ``aclose`` closes them when ``owned``."""
        if not clients:
            raise ValueError("HttpxTransport needs at least one client")
        self.clients = list(clients)
        self.owned = owned
        self._busy = [0] * len(self.clients)

    @classmethod
    def http2(cls, settings: PushSettings) -> HttpxTransport:
        """HTTP/2 clients for ``settings``: ``ceil(concurrency / 100)`` of them."""
        # Without TLS there is no ALPN: speak HTTP/2 from the first byte (h2c, prior knowledge).
        prior_knowledge = settings.fcm_url.lower().startswith("http://")
        shards = math.ceil(settings.concurrency / STREAMS_PER_CONNECTION)
        timeout = _timeout(settings.timeout)
        return cls(
            [
                httpx.AsyncClient(http1=not prior_knowledge, http2=True, timeout=timeout)
                for _ in range(shards)
            ]
        )

    @classmethod
    def over(cls, transport: httpx.AsyncBaseTransport, settings: PushSettings) -> HttpxTransport:
        """One client on ``transport`` (an ``httpx.ASGITransport`` to the emulator, say)."""
        return cls([httpx.AsyncClient(transport=transport, timeout=_timeout(settings.timeout))])

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        limit: float,
    ) -> Reply:
        """One request on the least busy client."""
        busy = self._busy
        shard = 0 if len(busy) == 1 else min(range(len(busy)), key=busy.__getitem__)
        busy[shard] += 1
        try:
            response = await self.clients[shard].request(
                method, url, content=body, headers=headers, timeout=limit
            )
        except httpx.TransportError as exc:
            raise TransportFailure(_describe(exc)) from exc
        finally:
            busy[shard] -= 1
        return Reply(
            response.status_code, response.headers, response.content, response.http_version
        )

    async def aclose(self) -> None:
        """Close the clients, if they are this transport's own."""
        if self.owned:
            for client in self.clients:
                await client.aclose()


class AiohttpTransport:
    """HTTP/1.1 over one aiohttp session: ``connections`` keep-alive connections at most.

    The session is opened on the first request, on the loop that makes it (``Sender`` objects
    are often built outside any loop, e.g. by ``Sender.from_settings`` in a factory), and closed
    by ``aclose``; a request after that raises ``RuntimeError``.
    """

    def __init__(self, *, connections: int, timeout: float) -> None:
        """A transport with at most ``connections`` open; ``timeout`` for a whole request."""
        self.connections = connections
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._default = self._client_timeout(timeout)  # the usual case, made once

    @classmethod
    def http11(cls, settings: PushSettings) -> AiohttpTransport:
        """The HTTP/1.1 transport for ``settings``: a pool of ``concurrency`` connections."""
        return cls(connections=settings.concurrency, timeout=settings.timeout)

    @staticmethod
    def _client_timeout(seconds: float) -> aiohttp.ClientTimeout:
        # "total" bounds the whole exchange, waiting for a pooled connection included, as
        # httpx's timeout does for the sender's per-request limit.
        return aiohttp.ClientTimeout(total=seconds, connect=min(seconds, CONNECT_TIMEOUT))

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the transport is closed")
        connector = aiohttp.TCPConnector(
            limit=self.connections,
            limit_per_host=0,
            keepalive_timeout=KEEPALIVE,
            ssl=tls_context(),
        )
        # No cookie jar: FCM sets none, and a jar would be consulted on every request.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._default, cookie_jar=aiohttp.DummyCookieJar()
        )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        limit: float,
    ) -> Reply:
        """One request on a pooled connection (a new one while fewer than ``connections``)."""
        session = self._session or self._open()
        timeout = self._default if limit == self.timeout else self._client_timeout(limit)
        try:
            async with session.request(
                method, url, data=body, headers=headers, timeout=timeout
            ) as response:
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportFailure(_describe(exc)) from exc
        version = response.version
        spoken = _VERSIONS.get(version) if version is not None else None
        return Reply(response.status, response.headers, data, spoken or f"HTTP/{version}")

    async def aclose(self) -> None:
        """Close the session and its connections. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def tls_context() -> ssl.SSLContext:
    """The TLS context of the HTTP/1.1 transport: certificates checked as httpx checks them.

    Against ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, else certifi's bundle. aiohttp's
    own default is the system's store, which some Pythons lack (python.org's macOS builds, slim
    images without ca-certificates): FCM would then be reachable over HTTP/2 (httpx) and not
    over HTTP/1.1. Made once per session, when it opens.
    """
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


_VERSIONS: Final = {aiohttp.HttpVersion11: "HTTP/1.1", aiohttp.HttpVersion10: "HTTP/1.0"}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        text = "timed out"
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def make_transport(
    settings: PushSettings, transport: httpx.AsyncBaseTransport | None = None
) -> Transport:
    """The transport a sender makes for itself: HTTP/2 shards (httpx) or HTTP/1.1 (aiohttp).

    With ``transport`` (an ``httpx.ASGITransport`` to the emulator, say) one httpx client on it,
    whatever ``settings.http2`` says: such a transport decides its own protocol.
    """
    if transport is not None:
        return HttpxTransport.over(transport, settings)
    if settings.http2:
        return HttpxTransport.http2(settings)
    return AiohttpTransport.http11(settings)


def as_transport(http: httpx.AsyncClient | Transport) -> Transport:
    """A caller's HTTP client as a transport; the caller keeps closing it."""
    if isinstance(http, httpx.AsyncClient):
        return HttpxTransport([http], owned=False)
    return http


__all__ = [
    "AiohttpTransport",
    "HttpxTransport",
    "Reply",
    "Transport",
    "TransportFailure",
    "as_transport",
    "make_transport",
    "tls_context",
]
