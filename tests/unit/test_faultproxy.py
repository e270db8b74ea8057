"""The failover tests' fault-injecting TCP proxy, against a tiny threaded echo server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.faultproxy import Counters, FaultProxy, Mode

STALL = 0.3  # how long a read must stay unanswered to count as black-holed


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1 that records how each connection ended."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self.ends: list[str] = []  # "eof" or "reset", one per finished connection
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        """Accept connections until the listener is closed."""
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        """Send back whatever arrives; record whether the peer ended with EOF or RST."""
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
            end = "eof"
        except ConnectionResetError:
            end = "reset"
        except OSError:
            end = "closed"
        with self._lock:
            self.ends.append(end)

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self.listener.close()
        with self._lock:
            for conn in self._conns:
                conn.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """A running echo server."""
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    """A started proxy in front of the echo server."""
    with FaultProxy("127.0.0.1", echo.port) as started:
        yield started


def connect(proxy: FaultProxy) -> socket.socket:
    """A client connection through the proxy."""
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=2.0)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` and read back as many bytes (or fewer, at EOF)."""
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll until ``condition`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.01)


def assert_stalls(sock: socket.socket) -> None:
    """A read on ``sock`` gets nothing, neither data nor EOF nor an error, for ``STALL`` s."""
    sock.settimeout(STALL)
    with pytest.raises(TimeoutError):
        sock.recv(1)


def test_forwards_both_ways_and_counts(proxy: FaultProxy, echo: EchoServer) -> None:
    """Bytes go through both ways, and connections and bytes are counted."""
    with connect(proxy) as one, connect(proxy) as two:
        assert roundtrip(one, b"hello") == b"hello"
        assert roundtrip(two, b"x" * 100_000) == b"x" * 100_000
        assert proxy.counters() == Counters(
            accepted=2, connected=2, open=2, resets=0, bytes_up=100_005, bytes_down=100_005
        )
    wait_for(lambda: proxy.counters().open == 0)
    wait_for(lambda: len(echo.ends) == 2)
    assert echo.ends == ["eof", "eof"]
    assert proxy.counters().bytes == 200_010
    assert proxy.mode is Mode.FORWARD


def test_reset_sends_rst_to_both_sides(proxy: FaultProxy, echo: EchoServer) -> None:
    """``reset`` closes an established connection with an RST to the client and the target."""
    with connect(proxy) as client:
        assert roundtrip(client, b"ping") == b"ping"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    wait_for(lambda: echo.ends == ["reset"] and proxy.counters().open == 0)
    counters = proxy.counters()
    assert (counters.resets, counters.open, counters.bytes) == (1, 0, 8)
    assert proxy.mode is Mode.RESET


def test_reset_refuses_new_connections_until_heal(proxy: FaultProxy, echo: EchoServer) -> None:
    """While reset, new connections are reset without reaching the target; ``heal`` ends it."""
    proxy.reset()
    for _ in range(3):
        # The RST may come before connect() returns, or at the first read.
        with pytest.raises(ConnectionResetError), connect(proxy) as client:
            client.recv(1)
    assert echo.accepted == 0
    assert proxy.counters().resets == 3
    proxy.heal()
    with connect(proxy) as client:
        assert roundtrip(client, b"back") == b"back"
    assert echo.accepted == 1


def test_blackhole_stalls_existing_and_new_connections(proxy: FaultProxy, echo: EchoServer) -> None:
    """``blackhole`` forwards nothing and closes nothing; new connections never reach the target."""
    with connect(proxy) as old:
        assert roundtrip(old, b"before") == b"before"
        proxy.blackhole()
        old.sendall(b"lost")
        assert_stalls(old)
        with connect(proxy) as new:
            new.sendall(b"hello?")
            assert_stalls(new)
            wait_for(lambda: proxy.counters().accepted == 2)
            counters = proxy.counters()
            assert (counters.accepted, counters.connected, counters.open) == (2, 1, 2)
            assert (counters.bytes, counters.resets) == (12, 0)
            assert echo.accepted == 1
            assert echo.ends == []
            proxy.heal()
            with connect(proxy) as healed:
                assert roundtrip(healed, b"after") == b"after"
            assert_stalls(old)  # a black-holed connection stays stuck after heal
            assert_stalls(new)
    assert proxy.counters().connected == 2


def test_reset_frees_black_holed_connections(proxy: FaultProxy) -> None:
    """``reset`` after ``blackhole`` resets the stuck connections too."""
    with connect(proxy) as client:
        assert roundtrip(client, b"a") == b"a"
        proxy.blackhole()
        assert_stalls(client)
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    wait_for(lambda: proxy.counters().open == 0)


def test_unreachable_target_resets_the_client() -> None:
    """A client whose connection the target refuses gets an RST."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = int(unused.getsockname()[1])  # bound but not listening: connections refused
        with FaultProxy("127.0.0.1", port) as proxy:
            with pytest.raises(ConnectionResetError), connect(proxy) as client:
                client.recv(1)
            assert proxy.counters().connected == 0


def test_stop_closes_everything_and_control_needs_a_start(echo: EchoServer) -> None:
    """``stop`` resets the links and closes the listener; control calls need a started proxy."""
    proxy = FaultProxy("127.0.0.1", echo.port)
    with pytest.raises(RuntimeError, match="not started"):
        proxy.reset()
    port = proxy.start()
    assert port == proxy.port > 0
    with pytest.raises(RuntimeError, match="already started"):
        proxy.start()
    client = connect(proxy)
    assert roundtrip(client, b"x") == b"x"
    proxy.stop()
    proxy.stop()  # idempotent
    with client, pytest.raises(ConnectionResetError):
        client.recv(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
