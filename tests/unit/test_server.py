"""The HTTP/1.1 server: keep-alive, pipelining, limits and deadlines, against a fake app."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import IO

import pytest

from patchbay.http import TEXT, Reply, Request
from patchbay.server import SPOOL_IN_MEMORY, Acceptor, HttpProtocol, Limits, State, bind, drain

Seen = list[tuple[str, str, bytes, bytes | None, str | None]]


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, State, Seen, Acceptor]]:
    """A server whose app echoes the path and query after an optional delay."""
    seen: Seen = []

    async def respond(
        method: str,
        path: str,
        query: bytes,
        auth: bytes | None,
        peer: str | None,
        local: str | None,
    ) -> Reply:
        seen.append((method, path, query, auth, peer))
        if path == "/slow":
            await asyncio.sleep(0.3)
        if path == "/boom":
            raise RuntimeError("boom")
        return Reply(200, TEXT, path.encode() + b"?" + query)

    limits = Limits(
        receive_timeout=0.4,
        keep_alive_timeout=0.4,
        max_url_bytes=200,
        max_body_bytes=100,
        max_connections=50,
    )
    state = State(respond, limits)
    loop = asyncio.get_running_loop()
    srv = Acceptor(bind("127.0.0.1", 0), lambda: HttpProtocol(state))
    srv.start()
    port = srv.sock.getsockname()[1]

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(0.05)
            state.sweep(loop.time())

    task = asyncio.create_task(sweeper())
    yield port, state, seen, srv
    task.cancel()
    srv.close()


async def exchange(port: int, data: bytes, *, wait: float = 2.0) -> bytes:
    """Send raw bytes and read until the server closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    chunks = []
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


async def test_one_response_per_request_with_keep_alive(
    server: tuple[int, State, Seen, Acceptor],
) -> None:
    """A request gets status, content type, length and date in one response; keep-alive stays."""
    port, _, seen, _ = server
    out = await exchange(
        port, b"GET /db?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n", wait=0.2
    )
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/plain; charset=utf-8" in head and b"content-length: 7" in head
    assert b"date: " in head and b"connection: close" not in head
    assert body == b"/db?x=1"
    assert seen == [("GET", "/db", b"x=1", b"Bearer t", "127.0.0.1")]


async def test_pipelined_requests_are_answered_in_order(
    server: tuple[int, State, Seen, Acceptor],
) -> None:
    """Pipelined requests are answered in the order they came, the slow one included."""
    port, *_ = server
    out = await exchange(
        port,
        b"GET /slow?1 HTTP/1.1\r\nHost: a\r\n\r\nGET /fast?2 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /last?3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    bodies = [part.split(b"\r\n\r\n")[-1] for part in out.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"/slow?1", b"/fast?2", b"/last?3"]


async def test_http10_closes_after_the_answer(
    server: tuple[int, State, Seen, Acceptor],
) -> None:
    """An HTTP/1.0 request without keep-alive gets connection: close and the socket closes."""
    port, *_ = server
    out = await exchange(port, b"GET /db?a HTTP/1.0\r\n\r\n")
    assert b"connection: close" in out and out.endswith(b"/db?a")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET /" + b"x" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", b"431"),
        (b"POST /db HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n" + b"z" * 500, b"413"),
    ],
)
async def test_bad_requests_get_an_answer_and_a_close(
    server: tuple[int, State, Seen, Acceptor], request_bytes: bytes, status: bytes
) -> None:
    """Malformed or oversized requests get a 4xx and the connection closes; the app never sees them."""
    port, _, seen, _ = server
    out = await exchange(port, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status)
    assert seen == []


async def test_slow_request_is_cut_at_the_deadline(
    server: tuple[int, State, Seen, Acceptor],
) -> None:
    """Part of a request and then silence: 408 and close soon after receive_timeout."""
    port, *_ = server
    loop = asyncio.get_running_loop()
    began = loop.time()
    out = await exchange(port, b"GET /db HTTP/1.1\r\nHost:", wait=3)
    assert out.startswith(b"HTTP/1.1 408")
    assert loop.time() - began < 1.5


async def test_idle_keep_alive_is_closed(server: tuple[int, State, Seen, Acceptor]) -> None:
    """A keep-alive connection left idle is closed after keep_alive_timeout."""
    port, state, *_ = server
    out = await exchange(port, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", wait=3)
    assert out.endswith(b"/a?")
    assert not state.connections


async def test_app_failure_is_a_500_not_a_dead_connection(
    server: tuple[int, State, Seen, Acceptor],
) -> None:
    """An exception in the app answers 500 and the connection keeps serving."""
    port, *_ = server
    out = await exchange(
        port,
        b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error") and out.endswith(b"/ok?")


async def test_drain_finishes_answers_in_progress(
    server: tuple[int, State, Seen, Acceptor],
) -> None:
    """Draining lets a running request answer (with connection: close) and refuses new ones."""
    port, state, _, srv = server
    pending = asyncio.create_task(exchange(port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"))
    await asyncio.sleep(0.1)
    await drain(srv, state, 5)
    out = await pending
    assert out.startswith(b"HTTP/1.1 200") and b"connection: close" in out
    with pytest.raises(OSError, match=r"refused|Connect call failed"):
        await asyncio.open_connection("127.0.0.1", port)


@pytest.fixture
async def full_server() -> AsyncIterator[tuple[int, list[Request]]]:
    """A server whose /hooks/ endpoint records whole requests; its body limit is 50 bytes."""
    received: list[Request] = []

    async def respond(*args: object) -> Reply:
        return Reply(200, TEXT, b"lean")

    async def receive(request: Request) -> Reply:
        received.append(request)
        return Reply(202, TEXT, b"whole", None, ((b"retry-after", b"5"),))

    state = State(respond, Limits(max_body_bytes=100), receive, lambda path: 50)
    srv = await asyncio.get_running_loop().create_server(
        lambda: HttpProtocol(state), "127.0.0.1", 0
    )
    yield srv.sockets[0].getsockname()[1], received
    srv.close()


async def test_hooks_paths_get_headers_and_body(full_server: tuple[int, list[Request]]) -> None:
    """Requests under /hooks/ reach ``receive`` whole; extra reply headers are written."""
    port, received = full_server
    answer = await exchange(
        port,
        b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=ab\r\n"
        b"X-Two: a\r\nX-Two: b\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody",
    )
    assert answer.startswith(b"HTTP/1.1 202 ")
    assert b"\r\nretry-after: 5\r\n" in answer
    [request] = received
    assert (request.method, request.path, request.body) == ("POST", "/hooks/gh", b"body")
    assert request.headers["x-hub-signature-256"] == "sha256=ab"
    assert request.headers["x-two"] == "a, b"


async def test_hooks_body_over_the_endpoint_limit_is_refused_unread(
    full_server: tuple[int, list[Request]],
) -> None:
    """A Content-Length over the endpoint's own limit gets 413 before any body byte."""
    port, received = full_server
    answer = await exchange(
        port, b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\nContent-Length: 51\r\n\r\n", wait=1
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert received == []


async def test_expect_continue_is_answered(full_server: tuple[int, list[Request]]) -> None:
    """``Expect: 100-continue`` gets its interim answer, then the real one."""
    port, _ = full_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"{}")
    final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert final.startswith(b"HTTP/1.1 202 ")
    writer.close()


async def test_other_paths_stay_on_the_lean_path(full_server: tuple[int, list[Request]]) -> None:
    """Everything else goes to ``respond``, without its headers or body kept."""
    port, received = full_server
    answer = await exchange(port, b"GET /db?x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.endswith(b"lean")
    assert received == []


UPLOAD = 6 << 20


@pytest.fixture
async def upload_server() -> AsyncIterator[
    tuple[int, list[tuple[bytes, bytes]], list[HttpProtocol]]
]:
    """A server taking uploads of up to 8 MB; it records (body, SHA-256 of the spooled body)."""
    seen: list[tuple[bytes, bytes]] = []
    protocols: list[HttpProtocol] = []
    spools: list[IO[bytes]] = []

    async def respond(*args: object) -> Reply:
        return Reply(200, TEXT, b"lean")

    async def receive(request: Request) -> Reply:
        assert request.spool is not None
        spools.append(request.spool)
        digest = hashlib.sha256()
        for chunk in request.chunks():
            digest.update(chunk)
        seen.append((request.body, digest.digest()))
        return Reply(201, TEXT, b"stored")

    def protocol() -> HttpProtocol:
        protocols.append(HttpProtocol(state))
        return protocols[-1]

    state = State(respond, Limits(max_body_bytes=100), receive, lambda path: 8 << 20)
    srv = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1], seen, protocols
    srv.close()
    assert all(spool.closed for spool in spools), "a spooled body was left open"


async def test_uploads_are_spooled_not_kept_in_memory(
    upload_server: tuple[int, list[tuple[bytes, bytes]], list[HttpProtocol]],
) -> None:
    """A 6 MB upload reaches the app through a spool; the server never holds it in memory."""
    port, seen, _ = upload_server
    body = bytes(range(256)) * (UPLOAD // 256)
    head = b"POST /v1/crm/Leads/1/attachments HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    tracemalloc.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head % len(body))
        for i in range(0, len(body), 1 << 16):  # sent in pieces, as a client streams a file
            writer.write(body[i : i + (1 << 16)])
            await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"stored"), 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 201 ")
    assert seen == [(b"", hashlib.sha256(body).digest())]
    # About the in-memory spool twice (when it moves to its file), whatever the upload's size.
    assert peak < 3 * SPOOL_IN_MEMORY < UPLOAD, f"{peak} bytes traced while receiving {UPLOAD}"


async def test_an_upload_cut_off_leaves_no_spool_behind(
    upload_server: tuple[int, list[tuple[bytes, bytes]], list[HttpProtocol]],
) -> None:
    """A client that drops mid-upload: its spooled part is closed (and so deleted)."""
    port, seen, protocols = upload_server
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /crm/private/json/Leads/uploadFile HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n"
    )
    writer.write(b"x" * 2_000_000)
    await writer.drain()
    for _ in range(100):
        if protocols and protocols[0]._body_bytes >= 2_000_000:
            break
        await asyncio.sleep(0.01)
    assert protocols[0]._spool is not None
    writer.close()
    for _ in range(100):
        if protocols[0]._spool is None:
            break
        await asyncio.sleep(0.01)
    assert protocols[0]._spool is None
    assert seen == []


async def test_a_burst_of_connections_is_taken_in_one_readiness_event() -> None:
    """Every waiting connection, up to the batch, is accepted at once; the rest next time."""
    state = State(lambda *args: asyncio.sleep(0, Reply(200, TEXT, b"")), Limits())
    acceptor = Acceptor(bind("127.0.0.1", 0), lambda: HttpProtocol(state))
    address = acceptor.sock.getsockname()
    clients = [socket.create_connection(address) for _ in range(Acceptor.BATCH + 2)]
    try:
        acceptor._ready()  # what one readiness event of the listening socket runs
        await settled(acceptor)
        assert len(state.connections) == Acceptor.BATCH
        acceptor._ready()
        await settled(acceptor)
        assert len(state.connections) == Acceptor.BATCH + 2
    finally:
        for client in clients:
            client.close()
        acceptor.close()


async def test_out_of_descriptors_pauses_accepting_instead_of_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EMFILE stops accepting for a moment, then accepting resumes by itself."""
    state = State(lambda *args: asyncio.sleep(0, Reply(200, TEXT, b"")), Limits())
    acceptor = Acceptor(bind("127.0.0.1", 0), lambda: HttpProtocol(state))
    monkeypatch.setattr(Acceptor, "PAUSE", 0.05)
    acceptor.start()
    calls = 0

    def accept() -> tuple[socket.socket, object]:
        nonlocal calls
        calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    real = acceptor.sock
    monkeypatch.setattr(acceptor, "sock", _Wrapped(real, accept))
    client = socket.create_connection(real.getsockname())
    try:
        await asyncio.sleep(0.02)
        assert calls == 1  # one failure, then no busy loop on the still-readable socket
        monkeypatch.setattr(acceptor, "sock", real)
        await asyncio.sleep(0.1)
        assert len(state.connections) == 1  # resumed and accepted
    finally:
        client.close()
        acceptor.close()


async def settled(acceptor: Acceptor) -> None:
    """Wait until every accepted connection has its transport."""
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not acceptor.opening:
            return
    raise AssertionError("connections still opening")


class _Wrapped:
    """A listening socket whose ``accept`` is replaced."""

    def __init__(self, sock: socket.socket, accept: Callable[[], tuple[socket.socket, object]]):
        self._sock = sock
        self.accept = accept

    def fileno(self) -> int:
        return self._sock.fileno()
