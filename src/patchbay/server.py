"""Serving: uvicorn with its httptools protocol, plus the receive deadline uvicorn lacks.

uvicorn gives keep-alive, pipelining, graceful drain on SIGTERM (``drain_timeout``) and worker
processes. A bare uvicorn holds a connection open for as long as a client takes to send its
request (slowloris); ``DeadlineProtocol`` closes a connection whose request has not fully
arrived ``receive_timeout`` seconds after it began (DBSlayer's 10 s), and refuses a request line
longer than the request size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from patchbay.app import STATS_FILE
from patchbay.settings import Settings

URL_SLACK = 16 * 1024  # room for the path and the percent-encoding of a request at the limit


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for receiving each request."""

    receive_timeout = 10.0
    max_url_bytes = 1_048_576 + URL_SLACK

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the deadline: a connection that sends nothing is closed too."""
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._url_bytes = 0
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Start the deadline at the first byte of each request."""
        if self._deadline is None:
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        """Reset the request line's length count."""
        self._url_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        """Refuse a request line over the limit instead of buffering it."""
        self._url_bytes += len(url)
        if self._url_bytes > self.max_url_bytes:
            self._refuse(b"414 URI Too Long", b"request too large")
            return
        super().on_url(url)

    def on_message_complete(self) -> None:
        """The whole request arrived in time."""
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.receive_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        elif not self.transport.is_closing() and self.cycle.more_body:
            self._refuse(b"408 Request Timeout", b"request not received in time")

    def _refuse(self, status: bytes, message: bytes) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(message) + message
        )
        self.transport.close()


def configure_protocol(settings: Settings) -> None:
    """Set this process's request limits (worker processes call it from the app factory)."""
    DeadlineProtocol.receive_timeout = settings.server.receive_timeout
    DeadlineProtocol.max_url_bytes = settings.server.max_request_bytes + URL_SLACK


def serve(settings: Settings, *, config_file: str | None, overrides: dict[str, Any]) -> None:
    """Run the server until SIGTERM, SIGINT or ``/shutdown``."""
    server = settings.server
    os.environ["PATCHBAY_SUPERVISOR_PID"] = str(os.getpid())
    configure_protocol(settings)
    run_dir = Path(server.state_dir) / "run"
    _remove_stale(run_dir)
    stats_file = run_dir / f"stats-{os.getpid()}"
    os.environ[STATS_FILE] = str(stats_file.resolve())
    try:
        _run(settings, config_file, overrides)
    finally:
        _remove(stats_file)


def _remove(stats_file: Path) -> None:
    slots = Path(str(stats_file) + ".slots")
    for leftover in (stats_file, *slots.glob("*.lock")):
        leftover.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        slots.rmdir()


def _remove_stale(run_dir: Path) -> None:
    """Remove the stats files of servers that are gone (a signal ends uvicorn without cleanup)."""
    for path in run_dir.glob("stats-*"):
        pid = path.name.removeprefix("stats-").removesuffix(".slots")
        if not pid.isdigit() or path.suffix == ".slots":
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(path)
        except PermissionError:
            pass


def _run(settings: Settings, config_file: str | None, overrides: dict[str, Any]) -> None:
    server = settings.server
    common: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "http": DeadlineProtocol,
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": server.access_log,
        "log_level": server.log_level,
        "timeout_keep_alive": server.keep_alive_timeout,
        "timeout_graceful_shutdown": server.drain_timeout,
        "limit_concurrency": server.max_connections,
        "backlog": 2048,
        "server_header": False,
        "date_header": True,
    }
    if server.workers == 1:
        from patchbay.app import create_app

        uvicorn.run(create_app(settings), **common)
        return
    os.environ["PATCHBAY_SERVE_ARGS"] = orjson.dumps(
        {"config": config_file, "overrides": overrides}
    ).decode()
    uvicorn.run("patchbay.app:app_from_environment", factory=True, workers=server.workers, **common)
