"""Shared fixtures: real database servers (skip or fail) and a ``patchbay serve`` subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import pytest

from patchbay.sql.backends.base import Address

REQUIRE = os.environ.get("PATCHBAY_REQUIRE_SERVICES") == "1"
MYSQL_URL = os.environ.get("PATCHBAY_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/bench")
POSTGRES_URL = os.environ.get(
    "PATCHBAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def unavailable(what: str) -> None:
    """Skip with a clear reason, or fail when PATCHBAY_REQUIRE_SERVICES=1."""
    if REQUIRE:
        pytest.fail(f"{what} (PATCHBAY_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(what)


def reachable(url: str) -> bool:
    """Whether something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 1.0):
            return True
    except OSError:
        return False


async def mysql_connect(url: str, *, use_database: bool = True) -> Any:
    """An autocommit asyncmy connection to the server (and database) of a MySQL URL."""
    import asyncmy

    address = Address.parse(url, port=3306, user="root")
    return await asyncmy.connect(
        host=address.host,
        port=address.port,
        user=address.user,
        password=address.password,
        database=address.database if use_database else None,
        autocommit=True,
    )


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """A MariaDB/MySQL URL whose database exists (created if missing)."""
    if not reachable(MYSQL_URL):
        unavailable(f"no MariaDB at {MYSQL_URL} (set PATCHBAY_TEST_MYSQL_URL)")

    async def create() -> None:
        conn = await mysql_connect(MYSQL_URL, use_database=False)
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE IF NOT EXISTS `{urlsplit(MYSQL_URL).path[1:]}`")
        conn.close()

    asyncio.run(create())
    return MYSQL_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL URL."""
    if not reachable(POSTGRES_URL):
        unavailable(f"no PostgreSQL at {POSTGRES_URL} (set PATCHBAY_TEST_POSTGRES_URL)")
    return POSTGRES_URL


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A running ``patchbay serve`` subprocess."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "patchbay", "serve", "-p", str(self.port), *args],
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"patchbay serve exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"patchbay serve did not become ready: {self.log.read_text()}")

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        """GET a path of the server."""
        kwargs.setdefault("timeout", 30)
        return httpx.get(self.url + path, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Start(Protocol):
    """Starts ``patchbay serve`` with the given arguments."""

    def __call__(
        self, args: list[str], env: dict[str, str] | None = None, port: int = 0
    ) -> Served: ...


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Start]:
    """Start ``patchbay serve`` with given arguments; every server is stopped after the test."""
    started: list[Served] = []

    def start(args: list[str], env: dict[str, str] | None = None, port: int = 0) -> Served:
        server = Served(args, tmp_path, env, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
