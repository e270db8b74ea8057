"""Serving: a small HTTP/1.1 server on uvloop and httptools, and the worker supervisor.

Hand-written on purpose. Measured on this kind of machine (``python-stack-ceiling.md``), a
minimal protocol server (one task and one ``write`` per response, no ASGI message dicts) beat
uvicorn with a bare ASGI callable by a third, and uvicorn lacks a deadline for receiving a
request (slowloris). What it does: keep-alive and pipelining (answers in order), a deadline for
receiving each request and for idle keep-alive connections (checked by one sweep per interval
instead of a timer per request), caps on the request line, headers, body and connections, and a
graceful drain on SIGTERM (a second SIGTERM ends it at once). The application behind it is one
coroutine, ``App.respond``; the same application is also an ASGI callable for other servers.

With ``workers > 1`` the supervisor binds the socket, forks the workers (each with its own event
loop, all accepting on that socket), restarts a worker that dies, and on SIGTERM or ``/shutdown``
stops them all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any, Final, NamedTuple, cast
from urllib.parse import unquote

import httptools
import structlog
import uvloop

from patchbay.app import STATS_FILE, App
from patchbay.http import TEXT, Reply, Request
from patchbay.settings import Settings

log = structlog.get_logger("patchbay.server")

Respond = Callable[[str, str, bytes, bytes | None, str | None, str | None], Awaitable[Reply]]
Receive = Callable[[Request], Awaitable[Reply]]
BodyLimit = Callable[[str], int | None]
# Paths whose endpoints read headers and a body; the SQL hot path keeps neither.
FULL_PREFIXES: Final = (b"/hooks/", b"/v1/push", b"/v1/crm/", b"/crm/private/")
# Uploads (up to 100 MB) are spooled: past SPOOL_IN_MEMORY bytes into a temporary file.
SPOOL_PREFIXES: Final = (b"/v1/crm/", b"/crm/private/")
SPOOL_IN_MEMORY: Final = 1 << 20
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

URL_SLACK: Final = 16 * 1024  # room for the path and the escapes of a request at the limit
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_PIPELINED: Final = 32  # queued requests on one connection before reading pauses
REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may take."""

    receive_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_url_bytes: int = 1_048_576 + URL_SLACK
    max_body_bytes: int = 1_048_576
    max_connections: int = 4096

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits the settings ask for."""
        server = settings.server
        return cls(
            receive_timeout=server.receive_timeout,
            keep_alive_timeout=server.keep_alive_timeout,
            max_url_bytes=server.max_request_bytes + URL_SLACK,
            max_body_bytes=server.max_request_bytes,
            max_connections=server.max_connections,
        )


class State:
    """What the connections of one worker share."""

    def __init__(
        self,
        respond: Respond,
        limits: Limits,
        receive: Receive | None = None,
        body_limit: BodyLimit | None = None,
    ) -> None:
        self.respond = respond
        self.receive = receive
        self.body_limit = body_limit
        self.limits = limits
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.date = b""
        self.tick()

    def tick(self) -> None:
        """Refresh the ``Date`` header (once a second, not per response)."""
        self.date = formatdate(usegmt=True).encode()

    def sweep(self, now: float) -> None:
        """Close connections past their deadline: slow requests and idle keep-alives."""
        for connection in list(self.connections):
            if now > connection.deadline:
                connection.expire()


class Pending(NamedTuple):
    """A request that arrived whole, waiting for its answer."""

    method: str
    url: bytes
    authorization: bytes | None
    keep_alive: bool
    # Headers, body and spooled body, for FULL_PREFIXES paths.
    whole: tuple[dict[str, str], bytes, IO[bytes] | None] | None


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: str | None = None
        self.local: str | None = None
        self.deadline = float("inf")
        self.receiving = False  # part of a request has arrived
        self.busy = False  # a request is being answered
        self.queue: collections.deque[Pending] = collections.deque()
        self.paused = False
        self._url = b""
        self._authorization: bytes | None = None
        self._header_bytes = 0
        self._body_bytes = 0
        self._body_limit = state.limits.max_body_bytes
        self._refused = False
        # Only requests to FULL_PREFIXES keep every header and their body; None: not known yet.
        self._full: bool | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._spool: IO[bytes] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept, unless the worker is full or draining."""
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        if len(self.state.connections) >= self.state.limits.max_connections or self.state.draining:
            self._refuse(503, b"busy")
            return
        self.state.connections.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.local = local[0] if isinstance(local, tuple) else None
        self.deadline = self.loop.time() + self.state.limits.receive_timeout

    def data_received(self, data: bytes) -> None:
        """Feed the parser; the receive deadline starts at a request's first byte."""
        if self._refused:
            return
        if not self.receiving:
            self.receiving = True
            self.deadline = self.loop.time() + self.state.limits.receive_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, b"upgrades are not supported")
        except httptools.HttpParserError:
            if not self._refused:
                self._refuse(400, b"malformed HTTP request")

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; an answer in progress is dropped when it is ready."""
        self.state.connections.discard(self)
        self._close_spool()
        for pending in self.queue:
            if pending.whole is not None and pending.whole[2] is not None:
                pending.whole[2].close()
        self.queue.clear()

    def _close_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    # httptools callbacks

    def on_message_begin(self) -> None:
        """A new request starts."""
        self._url = b""
        self._authorization = None
        self._header_bytes = 0
        self._body_bytes = 0
        self._body_limit = self.state.limits.max_body_bytes
        self._full = None
        self._headers = []
        self._body = []
        if self._spool is not None:  # a refused upload's
            self._close_spool()

    def on_url(self, url: bytes) -> None:
        """Collect the request target, refusing one over the limit."""
        self._url += url
        if len(self._url) > self.state.limits.max_url_bytes:
            self._refuse(414, b"request too large")
            raise ValueError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep the headers Patchbay reads (all of them on full requests); count them all."""
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, b"request headers too large")
            raise ValueError("headers too large")
        if self._full is None:  # the request target is complete once headers start
            self._full = self._url.startswith(FULL_PREFIXES) and self.state.receive is not None
        if self._full:
            self._headers.append((name, value))
        if len(name) == 13 and name.lower() == b"authorization":
            self._authorization = value

    def on_headers_complete(self) -> None:
        """Refuse a body over the endpoint's limit before reading it; answer ``Expect``."""
        if self._full is None:
            self._full = self._url.startswith(FULL_PREFIXES) and self.state.receive is not None
        if not self._full:
            return
        if self.state.body_limit is not None:
            path = self._url.partition(b"?")[0].decode("latin-1")
            self._body_limit = self.state.body_limit(path) or self._body_limit
        length = expect = b""
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = value.strip()
            elif lowered == b"expect":
                expect = value.strip().lower()
        if length.isdigit() and int(length) > self._body_limit:
            self._refuse(413, b"request too large")
            raise ValueError("body too large")
        if expect == b"100-continue" and self.transport is not None:
            self.transport.write(CONTINUE)
        if self._url.startswith(SPOOL_PREFIXES):
            # Closed by the request that takes it, or by the next request or the connection's end.
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115

    def on_body(self, body: bytes) -> None:
        """Keep the body of a full request; count every body against its limit."""
        self._body_bytes += len(body)
        if self._body_bytes > self._body_limit:
            self._refuse(413, b"request too large")
            raise ValueError("body too large")
        if self._spool is not None:
            self._spool.write(body)
        elif self._full:
            self._body.append(body)

    def on_message_complete(self) -> None:
        """A whole request arrived in time: answer it, or queue it behind the one in progress."""
        self.receiving = False
        self.deadline = float("inf")
        request = Pending(
            self.parser.get_method().decode("ascii", "replace"),
            self._url,
            self._authorization,
            self.parser.should_keep_alive(),
            self._whole() if self._full else None,
        )
        if self.busy:
            self.queue.append(request)
            if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
                self.transport.pause_reading()
                self.paused = True
        else:
            self._start(request)

    # answering

    def _whole(self) -> tuple[dict[str, str], bytes, IO[bytes] | None]:
        headers: dict[str, str] = {}
        for name, value in self._headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        spool, self._spool = self._spool, None  # the request owns it from here
        return headers, b"".join(self._body), spool

    def _start(self, request: Pending) -> None:
        self.busy = True
        task = self.loop.create_task(self._answer(*request))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    async def _answer(
        self,
        method: str,
        url: bytes,
        authorization: bytes | None,
        keep_alive: bool,
        whole: tuple[dict[str, str], bytes, IO[bytes] | None] | None,
    ) -> None:
        raw_path, _, query = url.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="latin-1")
        try:
            if whole is not None and self.state.receive is not None:
                headers, body, spool = whole
                try:
                    reply = await self.state.receive(
                        Request(method, path, query, headers, body, self.peer, spool)
                    )
                finally:
                    if spool is not None:
                        spool.close()
            else:
                reply = await self.state.respond(
                    method, path, query, authorization, self.peer, self.local
                )
        except Exception:
            log.exception("request failed", path=path)
            reply = Reply(500, TEXT, b"Internal Server Error")
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        keep_alive = keep_alive and not self.state.draining and method != "HEAD"
        head = self._head(reply.status, reply.content_type, len(reply.body), keep_alive)
        if reply.headers:
            head = head[:-2] + b"".join(b"%s: %s\r\n" % pair for pair in reply.headers) + b"\r\n"
        transport.write(head + reply.body)
        if not keep_alive:
            transport.close()
            return
        if self.queue:
            next_request = self.queue.popleft()
            if self.paused and len(self.queue) < MAX_PIPELINED // 2:
                transport.resume_reading()
                self.paused = False
            self._start(next_request)
            return
        self.busy = False
        if not self.receiving:
            self.deadline = self.loop.time() + self.state.limits.keep_alive_timeout

    def _head(self, status: int, content_type: bytes, length: int, keep_alive: bool) -> bytes:
        return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\ndate: %s\r\n%s\r\n" % (
            status,
            REASONS.get(status, b"Unknown"),
            content_type,
            length,
            self.state.date,
            b"" if keep_alive else b"connection: close\r\n",
        )

    def expire(self) -> None:
        """The deadline passed: a request too slow to arrive, or a keep-alive left idle."""
        if self.receiving:
            self._refuse(408, b"request not received in time")
        elif not self.busy and self.transport is not None:
            self.transport.close()

    def drain(self) -> None:
        """Stop reading new requests: close now if idle, else after the answer in progress."""
        if not self.busy and not self.receiving and self.transport is not None:
            self.transport.close()

    def _refuse(self, status: int, message: bytes) -> None:
        self._refused = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.busy:
            transport.write(self._head(status, TEXT, len(message), False) + message)
        transport.close()


class Acceptor:
    """Takes in up to ``BATCH`` waiting connections each time the listening socket is readable.

    uvloop's own server accepts one connection per event-loop iteration (libuv since 1.45), and
    a busy iteration takes milliseconds, so a burst of new connections waited in the kernel's
    queue: 64 keep-alive connections opened at once against a worker busy with SQLite 100-row
    reads were all accepted only after 0.8 s (one ``accept`` per ``epoll``), and wrk's p99 of
    that run was 378 ms against 37-52 ms with this class. Taking every waiting connection at
    once overshoots the other way: with one connection per request (DBSlayer's clients),
    accepting up to 64 at a time doubled p99 (67-86 ms against 33-44 ms), since requests then
    queue inside the worker rather than in the kernel's first-come queue; 4 at a time kept it
    there (35-45 ms). A small batch also leaves other workers their share of a burst.
    """

    BATCH: Final = 4
    PAUSE: Final = 0.1  # seconds to stop accepting when the process is out of descriptors

    def __init__(self, sock: socket.socket, factory: Callable[[], HttpProtocol]) -> None:
        self.sock = sock
        self.factory = factory
        self.loop = asyncio.get_running_loop()
        self.opening: set[asyncio.Task[None]] = set()  # transports being set up
        self.closed = False

    def start(self) -> None:
        """Accept from now on."""
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        """Accept nothing more: close this process's listening socket.

        With one worker new connections are then refused; with several, the socket stays open
        in the others (and the supervisor) until they stop too.
        """
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _ready(self) -> None:
        for _ in range(self.BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: stop for a moment, not spin
                log.warning("cannot accept", error=str(exc))
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(self.PAUSE, self._resume)
                return
            task = self.loop.create_task(self._open(conn))
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)

    async def _open(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError as exc:  # the client left before its transport was set up
            log.debug("connection lost while opening", error=str(exc))
            conn.close()


async def run_worker(settings: Settings, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM or SIGINT, then drain and stop."""
    app = App(settings)
    await app.start()
    state = State(app.respond, Limits.from_settings(settings), app.receive, app.body_limit)
    server = Acceptor(sock, lambda: HttpProtocol(state))
    server.start()
    loop = server.loop
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # a second signal: stop waiting for in-flight requests
            for task in list(state.tasks):
                task.cancel()
        stop.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal)
    interval = max(0.05, min(0.5, settings.server.receive_timeout / 4))
    host, port = sock.getsockname()[:2]
    log.info("serving", url=f"http://{host}:{port}", pid=os.getpid())
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        state.tick()
        state.sweep(loop.time())
    await drain(server, state, settings.server.drain_timeout)
    await app.stop()
    log.info("stopped", pid=os.getpid())


async def drain(server: Acceptor, state: State, seconds: float) -> None:
    """Refuse new connections, let the answers in progress finish, then close everything."""
    state.draining = True
    server.close()
    for connection in list(state.connections):
        connection.drain()
    deadline = time.monotonic() + seconds
    while state.tasks and time.monotonic() < deadline:
        await asyncio.wait(list(state.tasks), timeout=deadline - time.monotonic())
    for task in list(state.tasks):
        task.cancel()
    for connection in list(state.connections):
        if connection.transport is not None:
            connection.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, shared by every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM, SIGINT or ``/shutdown`` (which signals this process)."""
    server = settings.server
    os.environ["PATCHBAY_SUPERVISOR_PID"] = str(os.getpid())
    run_dir = Path(server.state_dir) / "run"
    _remove_stale(run_dir)
    stats_file = run_dir / f"stats-{os.getpid()}"
    os.environ[STATS_FILE] = str(stats_file.resolve())
    try:
        sock = bind(server.host, server.port)
    except OSError as exc:
        log.error("cannot listen", host=server.host, port=server.port, error=str(exc))
        sys.exit(1)
    try:
        if server.workers == 1:
            uvloop.run(run_worker(settings, sock))
        else:
            _supervise(settings, sock)
    finally:
        sock.close()
        _remove(stats_file)


def _supervise(settings: Settings, sock: socket.socket) -> None:
    """Fork the workers, restart any that dies, stop them all on SIGTERM or SIGINT."""
    children: dict[int, int] = {}  # pid → worker number
    stopping = False
    restarts: collections.deque[float] = collections.deque(maxlen=10)

    def fork(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                uvloop.run(run_worker(settings, sock))
            except BaseException:
                log.exception("worker failed", worker=number)
                code = 1
            finally:
                os._exit(code)
        children[pid] = number

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for number in range(settings.server.workers):
        fork(number)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
            continue
        number = children.pop(pid, -1)
        if number < 0 or stopping:
            continue
        log.warning("worker exited, restarting", worker=number, status=status)
        restarts.append(time.monotonic())
        if len(restarts) == restarts.maxlen and restarts[-1] - restarts[0] < 10:
            log.error("workers keep dying; stopping the server")
            stop(signal.SIGTERM, None)
            continue
        fork(number)


def _remove(stats_file: Path) -> None:
    slots = Path(str(stats_file) + ".slots")
    for leftover in (stats_file, *slots.glob("*.lock")):
        leftover.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        slots.rmdir()


def _remove_stale(run_dir: Path) -> None:
    """Remove the stats files of servers that are gone (killed without cleaning up)."""
    for path in run_dir.glob("stats-*"):
        pid = path.name.removeprefix("stats-")
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(path)
        except PermissionError:
            pass
