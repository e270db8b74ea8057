"""Serve an emulator (any ASGI app) on a loopback port: HTTP/1.1 and HTTP/2 without TLS.

Hypercorn is used because it speaks both protocols on one plain-TCP port. A connection starts
as HTTP/1.1; when its first bytes are the HTTP/2 preface (``PRI * HTTP/2.0``, what a client
with *prior knowledge* sends, e.g. ``httpx.AsyncClient(http1=False, http2=True)``) hypercorn
switches that connection to HTTP/2 ("h2c"); an ``Upgrade: h2c`` request works too. httpx with
``http2=True`` alone keeps HTTP/1.1 on ``http://`` URLs, since without TLS there is no ALPN to
offer HTTP/2. HTTP/2 connections allow ``max_concurrent_streams`` requests at once (100, as
Google's front ends announce).

**Dropping a connection.** An ASGI app cannot close its connection: when it raises before
answering, hypercorn (and uvicorn) answer ``500`` instead, and under HTTP/2 an app that started
an answer and then raised leaves the client waiting forever. So an app served here raises
``ConnectionDropped`` and this module's wrapper closes the TCP connection without a byte of
answer, as a network failure or a crashed front end would. Under HTTP/2 that ends every request
in flight on the connection, exactly like a real reset; those requests' handlers still run to
the end (a server does not know its client is gone), but their answers are abandoned. The
wrapper reaches the connection through hypercorn's objects (``send`` is bound to its
``HTTPStream``, whose protocol's ``send`` takes ``Closed`` to shut the socket); the integration
tests drop connections under both protocols, so a hypercorn release that moves these objects
fails them rather than silently answering 500. Under ``httpx.ASGITransport`` the exception
itself reaches the client, which is why it is an ``httpx.RemoteProtocolError``: the error a
client sees when a server hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, cast

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.events import Closed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.typing import Framework

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_CONCURRENT_STREAMS = 100  # per HTTP/2 connection, as fcm.googleapis.com announces
# hypercorn closes a connection (HTTP/2: GOAWAY) after 1000 requests by default; an emulator
# driven by a benchmark would then measure reconnections, so the default here is "never".
MAX_REQUESTS_PER_CONNECTION = 2**31 - 1
DISCONNECT_WAIT = 5.0  # seconds to wait for hypercorn to notice a connection we closed


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised by an app served here to close its connection without answering.

    Served by ``run`` or ``serve_in_thread``, the client sees the server hang up (httpx:
    ``RemoteProtocolError("Server disconnected...")``; requests: ``ConnectionError``). Through
    ``httpx.ASGITransport`` this exception reaches the client itself. Other servers (uvicorn)
    treat it as any app failure and answer 500.
    """

    def __init__(self, message: str = "Server disconnected without sending a response.") -> None:
        super().__init__(message)


class Droppable:
    """An ASGI wrapper for hypercorn: drops connections on request, never hangs on a dead one.

    ``ConnectionDropped`` from the app closes the TCP connection. And once the client is gone
    (``http.disconnect``), the app's sends are abandoned rather than awaited: hypercorn's HTTP/2
    protocol waits forever for an answer to drain into a connection that has closed, which
    would leave the app's request (and an emulator's ``in_flight`` count) hanging until
    shutdown. The app itself runs to completion, as a real server's would.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gone = asyncio.Event()
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            finally:
                gone.set()  # also if receive() fails: the connection is unusable then too

        async def receive_request() -> MutableMapping[str, Any]:
            nonlocal watcher
            if watcher is not None:  # the body was read: only the disconnect is left
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        async def send_unless_gone(message: MutableMapping[str, Any]) -> None:
            if gone.is_set():
                return
            if message["type"] != "http.response.body":
                # Only a body waits for the connection to take it (the hang above); other
                # messages fail fast on a closed connection, so they need no race.
                await send(message)
                return
            sending = asyncio.ensure_future(send(message))
            waiting = asyncio.ensure_future(gone.wait())
            try:
                await asyncio.wait((sending, waiting), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
                if not sending.done():
                    sending.cancel()  # stuck on a closed connection: give up on it
            if not sending.cancelled():
                sending.result()  # the send's own failure, if any

        try:
            await self.app(scope, receive_request, send_unless_gone)
        except ConnectionDropped:
            if not await _close_connection(send):
                raise  # not hypercorn: let the server answer as it does for any failure
            # Return only once hypercorn has seen the connection go: returning earlier would
            # make it write a 500 into the closing socket.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISCONNECT_WAIT):
                    if watcher is None:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                    else:
                        await gone.wait()
        finally:
            if watcher is not None:
                watcher.cancel()


async def _close_connection(send: Send) -> bool:
    """Close the TCP connection a hypercorn ``send`` belongs to; False when it is not hypercorn's."""
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, HTTPStream):
        return False
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol | H2Protocol):
        return False
    # The protocol's ``send`` is the TCP server's: ``Closed`` makes it shut the socket.
    await protocol.send(Closed())
    return True


def listen(host: str = "127.0.0.1", port: int = 0, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port).

    Listening before hypercorn starts means clients can connect at once (the kernel queues
    them), and the port is known even when 0 was asked for.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def base_url(sock: socket.socket, scheme: str = "http") -> str:
    """``http://host:port`` (or another scheme) of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _config(
    sock: socket.socket,
    *,
    max_concurrent_streams: int,
    max_requests_per_connection: int,
    graceful_timeout: float,
    log_level: str,
    tls: tuple[str, str] | None = None,
) -> Config:
    config = Config()
    if tls is not None:
        # hypercorn then offers h2 and http/1.1 by ALPN, as Google's front ends do.
        config.certfile, config.keyfile = tls
    # hypercorn takes the socket over (and closes it) through its file descriptor.
    config.bind = [f"fd://{sock.detach()}"]
    config.h2_max_concurrent_streams = max_concurrent_streams
    config.keep_alive_max_requests = max_requests_per_connection
    config.graceful_timeout = graceful_timeout
    config.loglevel = log_level
    config.accesslog = None
    return config


def run(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 9091,
    *,
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
    max_requests_per_connection: int = MAX_REQUESTS_PER_CONNECTION,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (HTTP/1.1 and h2c on one port).

    ``sock``, a socket from ``listen``, is used instead of ``host`` and ``port`` when given.
    """
    listening = sock if sock is not None else listen(host, port)
    config = _config(
        listening,
        max_concurrent_streams=max_concurrent_streams,
        max_requests_per_connection=max_requests_per_connection,
        graceful_timeout=3.0,
        log_level="WARNING",  # the caller prints its own banner
    )
    asyncio.run(_serve(app, config, None))


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
    max_requests_per_connection: int = MAX_REQUESTS_PER_CONNECTION,
    tls: tuple[str, str] | None = None,
) -> Iterator[str]:
    """Serve ``app`` in a background thread for the block; yield its base URL.

    For tests: the port is free and already listening when the block starts, and the server is
    stopped (open connections closed) when it ends. The app runs on the thread's event loop, so
    inspect its state from the test but do not await its coroutines there. ``tls``, a
    (certificate file, key file) pair, serves ``https://`` instead, with h2 and http/1.1 offered
    by ALPN: what a client meets at Google.
    """
    sock = listen(host, port)
    url = base_url(sock, "https" if tls is not None else "http")
    config = _config(
        sock,
        max_concurrent_streams=max_concurrent_streams,
        max_requests_per_connection=max_requests_per_connection,
        graceful_timeout=1.0,
        log_level="WARNING",
        tls=tls,
    )
    ready = threading.Event()
    loop_and_stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    failure: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop_and_stop.append((asyncio.get_running_loop(), stop))
        ready.set()
        await _serve(app, config, stop.wait)

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the test's thread, which re-raises it
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name=f"serve {url}", daemon=True)
    thread.start()
    ready.wait()
    try:
        if failure:
            raise RuntimeError(f"the server at {url} did not start") from failure[0]
        yield url
    finally:
        if loop_and_stop:
            loop, stop = loop_and_stop[0]
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(10)
    if failure:
        raise RuntimeError(f"the server at {url} failed") from failure[0]


async def _serve(
    app: ASGIApp, config: Config, shutdown_trigger: Callable[[], Awaitable[Any]] | None
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_ignore_cancelled_connections)
    # hypercorn's ASGI types are TypedDicts; our apps take plain mappings, which is what they get.
    await serve(cast(Framework, Droppable(app)), config, shutdown_trigger=shutdown_trigger)


def _ignore_cancelled_connections(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A connection still busy when the server stops (an app sleeping out a slow fault) has its
    # task cancelled; Python 3.11's asyncio.streams then calls task.exception() on it, which
    # raises CancelledError into a callback and logs a traceback (fixed in 3.12). Nothing is
    # wrong: say nothing. Everything else goes to the default handler.
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)
