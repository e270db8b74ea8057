"""The MySQL connector's Unix-socket transport (``?unix_socket=`` in the URL), without a server."""

from __future__ import annotations

from typing import Any

import asyncmy
import pytest

from patchbay.sql.backends import mysql


class FakeConn:
    """Stands in for an asyncmy connection: only what the connector touches."""

    _connected = True


def capture_connect(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def connect(**kwargs: Any) -> FakeConn:
        seen.update(kwargs)
        return FakeConn()

    monkeypatch.setattr(asyncmy, "connect", connect)
    return seen


def test_unix_socket_read_from_the_url() -> None:
    """The ``unix_socket`` query parameter names the socket; without it there is none."""
    assert (
        mysql.unix_socket("mysql://app:pw@localhost/shop?unix_socket=/run/mysqld/mysqld.sock")
        == "/run/mysqld/mysqld.sock"
    )
    assert mysql.unix_socket("mysql://app:pw@db1:3307/shop") is None
    assert mysql.unix_socket("mysql://app:pw@db1/shop?charset=utf8mb4") is None


def test_socket_url_keeps_the_database_name() -> None:
    """The query string does not leak into the database name."""
    connector = mysql.MySQLConnector(
        "mysql://app:pw@localhost/shop?unix_socket=/tmp/my.sock", strict=False, connect_timeout=1
    )
    assert connector.database == "shop"
    assert connector.unix_socket == "/tmp/my.sock"


async def test_connect_passes_the_socket_to_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket URL makes asyncmy connect through that socket; a TCP URL passes none."""
    seen = capture_connect(monkeypatch)
    sock = mysql.MySQLConnector(
        "mysql://app:pw@localhost/shop?unix_socket=/tmp/my.sock", strict=False, connect_timeout=1
    )
    await sock.connect()
    assert seen["unix_socket"] == "/tmp/my.sock"
    assert seen["database"] == "shop"
    tcp = mysql.MySQLConnector("mysql://app:pw@db1:3307/shop", strict=False, connect_timeout=1)
    await tcp.connect()
    assert seen["unix_socket"] is None
    assert (seen["host"], seen["port"]) == ("db1", 3307)


async def test_host_info_names_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOST_INFO reads as libmysqlclient's: the Unix socket, or the host via TCP/IP."""
    capture_connect(monkeypatch)
    sock = mysql.MySQLConnector(
        "mysql://app@localhost/shop?unix_socket=/tmp/my.sock", strict=False, connect_timeout=1
    )
    tcp = mysql.MySQLConnector("mysql://app@db1/shop", strict=False, connect_timeout=1)
    assert await (await sock.connect()).info("HOST_INFO") == "Localhost via UNIX socket"
    assert await (await tcp.connect()).info("HOST_INFO") == "db1 via TCP/IP"
