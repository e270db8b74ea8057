"""Reading a network database's URL."""

from __future__ import annotations

from patchbay.sql.backends.base import Address


def test_address_reads_every_part_and_unquotes() -> None:
    """User, password (percent-encoded), host, port and database all come from the URL."""
    address = Address.parse("mysql://app:p%40ss@db1:3307/shop", port=3306, user="root")
    assert address == Address("db1", 3307, "app", "p@ss", "shop")


def test_address_defaults() -> None:
    """Missing parts take the backend's defaults."""
    assert Address.parse("postgresql:///reports", port=5432, user="postgres") == Address(
        "127.0.0.1", 5432, "postgres", "", "reports"
    )
