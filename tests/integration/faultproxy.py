"""A loopback TCP proxy that injects network faults, for the failover tests.

``FaultProxy`` listens on 127.0.0.1 and forwards every connection to one target. It runs its own
asyncio event loop in a daemon thread, so a synchronous test drives it while another process (a
``patchbay serve`` subprocess) talks through it. Every control method returns only once the
proxy's loop has applied it. Three modes:

* forward (the start, and after ``heal``): bytes are copied both ways;
* ``reset``: every connection is closed with an RST (``SO_LINGER`` 0) on both sides, and every
  new connection is accepted and reset at once, until ``heal``;
* ``blackhole``: nothing is forwarded any more on the existing connections, and new connections
  are accepted but never connected to the target nor answered; nothing is closed. A connection
  black-holed once stays stuck after ``heal`` (until ``reset`` or ``stop``), like a link whose
  peer gave up on it; only new connections are forwarded again.

``counters()`` tells how many connections were accepted and connected to the target and how many
bytes went each way, which is how a test sees where traffic goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

_T = TypeVar("_T")
CHUNK = 65536
CONTROL_TIMEOUT = 10.0
_LINGER_RST = struct.pack("ii", 1, 0)


class Mode(enum.Enum):
    """What the proxy does with connections."""

    FORWARD = "forward"
    RESET = "reset"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class Counters:
    """A snapshot of the proxy's counters since it started."""

    accepted: int
    """Client connections accepted."""
    connected: int
    """Connections opened to the target."""
    open: int
    """Client connections not closed yet (forwarding, black-holed or being connected)."""
    resets: int
    """Connections the proxy closed with an RST."""
    bytes_up: int
    """Bytes forwarded from clients to the target."""
    bytes_down: int
    """Bytes forwarded from the target to clients."""

    @property
    def bytes(self) -> int:
        """Bytes forwarded in both directions."""
        return self.bytes_up + self.bytes_down


class _Link:
    """One client connection and, once connected, its connection to the target."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.target: asyncio.StreamWriter | None = None
        self.stuck = False
        self.closed = asyncio.Event()

    def writers(self) -> list[asyncio.StreamWriter]:
        """The link's open sides."""
        return [w for w in (self.client, self.target) if w is not None]

    def reset(self) -> None:
        """Close both sides at once with an RST."""
        for writer in self.writers():
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            writer.transport.abort()
        self.closed.set()

    def close(self) -> None:
        """Close both sides politely (FIN)."""
        for writer in self.writers():
            writer.close()
        self.closed.set()


class FaultProxy:
    """A TCP proxy from 127.0.0.1 to ``target_host:target_port`` with injectable faults."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.mode = Mode.FORWARD
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted = 0
        self._connected = 0
        self._resets = 0
        self._bytes_up = 0
        self._bytes_down = 0

    # -- control, from any thread -------------------------------------------------------------

    def start(self) -> int:
        """Start listening on an ephemeral port of 127.0.0.1 and return that port."""
        if self._loop is not None:
            raise RuntimeError("the proxy is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"faultproxy->{self.target_port}", daemon=True
        )
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), loop
        ).result(CONTROL_TIMEOUT)
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    def stop(self) -> None:
        """Close every connection and the listener, and end the proxy's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(CONTROL_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT)
        loop.close()
        self._loop = self._thread = self._server = None

    def reset(self) -> None:
        """Reset every connection (RST both sides) and reset new ones, until ``heal``."""

        def apply() -> None:
            self.mode = Mode.RESET
            for link in list(self._links):
                self._reset(link)

        self._control(apply)

    def blackhole(self) -> None:
        """Stop forwarding on every connection; accept new ones but never answer them."""

        def apply() -> None:
            self.mode = Mode.BLACKHOLE
            for link in self._links:
                link.stuck = True

        self._control(apply)

    def heal(self) -> None:
        """Forward new connections again (black-holed connections stay stuck)."""

        def apply() -> None:
            self.mode = Mode.FORWARD

        self._control(apply)

    def counters(self) -> Counters:
        """A consistent snapshot of the counters."""

        def read() -> Counters:
            return Counters(
                accepted=self._accepted,
                connected=self._connected,
                open=len(self._links),
                resets=self._resets,
                bytes_up=self._bytes_up,
                bytes_down=self._bytes_down,
            )

        return self._control(read)

    def __enter__(self) -> FaultProxy:
        """Start the proxy."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the proxy."""
        self.stop()

    def _control(self, action: Callable[[], _T]) -> _T:
        """Run ``action`` on the proxy's loop, let the sockets it closed go, return its result."""
        if self._loop is None:
            raise RuntimeError("the proxy is not started")

        async def run() -> _T:
            result = action()
            # transport.abort() closes the socket in a callback of the next loop iteration.
            await asyncio.sleep(0)
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(CONTROL_TIMEOUT)

    # -- the proxy's loop -----------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Take a new client connection (the asyncio server's callback)."""
        self._accepted += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handle one client connection according to the mode, until it ends."""
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.mode is Mode.RESET:
                self._reset(link)
                return
            if self.mode is Mode.BLACKHOLE:
                link.stuck = True
                await link.closed.wait()
                return
            try:
                target_reader, link.target = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                self._reset(link)
                return
            self._connected += 1
            if link.closed.is_set():  # reset while connecting
                self._reset(link)
                return
            await asyncio.gather(
                self._pump(link, reader, link.target, up=True),
                self._pump(link, target_reader, writer, up=False),
            )
        finally:
            if not link.closed.is_set():
                link.close()
            self._links.discard(link)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        """Copy one direction of a link; park it for good once the link is black-holed."""
        try:
            while not link.closed.is_set():
                data = await reader.read(CHUNK)
                if link.stuck:
                    await link.closed.wait()
                    return
                if not data:
                    break
                writer.write(data)
                if up:
                    self._bytes_up += len(data)
                else:
                    self._bytes_down += len(data)
                await writer.drain()
        except OSError:
            if not link.closed.is_set():
                self._reset(link)  # one side broke: break the other one the same way
            return
        link.close()  # one side ended: end the other one too

    def _reset(self, link: _Link) -> None:
        """Reset a link and count it."""
        if not link.closed.is_set():
            self._resets += 1
        link.reset()

    async def _shutdown(self) -> None:
        """Close the listener, every link and every handler task."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.get_running_loop().shutdown_default_executor()
