"""The one seam between the gateway and a database driver.

A ``Connector`` knows one server (one URL) and opens ``Connection``s to it. A connection runs a
request's SQL and answers DBSlayer's info flags. Errors the database reports in answer to SQL
come back inside the ``Outcome``; a failure of the server or of the link to it raises
``ServerFailure``, whose ``sent`` says whether the SQL may have reached the server (only a
request that provably never did may be moved to another server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from patchbay.sql.results import Outcome
from patchbay.sql.statements import Shape


@dataclass(frozen=True, slots=True)
class Address:
    """Where a network database server is and who to log in as, from its URL."""

    host: str
    port: int
    user: str
    password: str
    database: str | None

    @classmethod
    def parse(cls, url: str, *, port: int, user: str) -> Address:
        """Read ``scheme://user:password@host:port/database`` with the given defaults."""
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or port,
            user=unquote(parts.username or user),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/")) or None,
        )


class ServerFailure(Exception):
    """The server could not be reached, or the link to it broke."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.sent = sent


class Connection(Protocol):
    """One open connection to a database server."""

    async def run(self, sql: str, *, rollback_on_error: bool, shape: Shape) -> Outcome:
        """Run ``sql`` (one or more statements) in order; leave no session state behind.

        ``shape`` says whether the SQL only reads and whether it can leave session state.
        """
        ...

    async def info(self, key: str) -> Any:
        """Answer one of DBSlayer's info flags (``STAT``, ``HOST_INFO``, ...)."""
        ...

    async def ping(self) -> None:
        """Check the server answers; raise ``ServerFailure`` if not."""
        ...

    def alive(self) -> bool:
        """Whether the connection still looks usable (its socket is open)."""
        ...

    async def close(self) -> None:
        """Close politely."""
        ...

    async def abort(self) -> None:
        """Stop what the connection is running on the server and drop it (after a timeout)."""
        ...


class Connector(Protocol):
    """Opens connections to one database server."""

    url: str
    kind: str

    async def connect(self) -> Connection:
        """Open a connection; raise ``ServerFailure(sent=False)`` if the server is unreachable."""
        ...

    async def aclose(self) -> None:
        """Release what the connector itself holds (threads, files)."""
        ...
