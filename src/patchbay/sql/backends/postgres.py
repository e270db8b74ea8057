"""PostgreSQL through asyncpg.

asyncpg runs one statement at a time, so a batch is split with the SQL lexer
(``statements.split``) and its statements run in order on one connection. Non-numeric types are
decoded as the server's text (set once per connection), so no ``datetime`` or ``Decimal`` is built
per value; ``numeric`` follows the same rule as MySQL's DECIMAL.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from patchbay.sql import statements, types, values
from patchbay.sql.backends import errnos
from patchbay.sql.backends.base import Address, ServerFailure
from patchbay.sql.results import Outcome, Rows, SqlError, Write
from patchbay.sql.statements import Shape

CLIENT_VERSION: Final = importlib.metadata.version("asyncpg")
TEXT_TYPES: Final = (
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "money",
    "inet",
    "cidr",
    "macaddr",
    "bit",
    "varbit",
)
LINK_ERRORS: Final = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    OSError,
)


def _to_int(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


class PostgresConnector:
    """Opens asyncpg connections to one PostgreSQL server."""

    kind = "postgresql"

    def __init__(self, url: str, *, strict: bool, connect_timeout: float) -> None:
        self.url = url
        self.address = Address.parse(url, port=5432, user="postgres")
        self.strict = strict
        self.connect_timeout = connect_timeout

    async def connect(self) -> PostgresConnection:
        """Open a connection and set the text codecs."""
        try:
            conn = await asyncpg.connect(
                host=self.address.host,
                port=self.address.port,
                user=self.address.user,
                password=self.address.password or None,
                database=self.address.database,
                timeout=self.connect_timeout,
                statement_cache_size=0,
            )
        except (TimeoutError, *LINK_ERRORS, asyncpg.PostgresError) as exc:
            raise ServerFailure(
                f"cannot connect: {str(exc) or type(exc).__name__}", sent=False
            ) from None
        try:
            for name in TEXT_TYPES:
                await conn.set_type_codec(
                    name, schema="pg_catalog", encoder=str, decoder=str, format="text"
                )
            await conn.set_type_codec(
                "numeric",
                schema="pg_catalog",
                encoder=str,
                decoder=float if self.strict else values.decimal,
                format="text",
            )
        except (*LINK_ERRORS, asyncpg.PostgresError) as exc:
            conn.terminate()
            raise ServerFailure(f"cannot set up the connection: {exc}", sent=False) from None
        return PostgresConnection(conn, self)

    async def aclose(self) -> None:
        """Nothing to release: connections are the pool's."""


class PostgresConnection:
    """One asyncpg connection."""

    def __init__(self, conn: asyncpg.Connection, connector: PostgresConnector) -> None:
        self._conn = conn
        self._connector = connector
        self._strict = connector.strict

    def alive(self) -> bool:
        """Whether the connection is open."""
        return not self._conn.is_closed()

    async def run(self, sql: str, *, rollback_on_error: bool, shape: Shape) -> Outcome:
        """Run each statement of the batch in order."""
        conn = self._conn
        results: list[Rows | Write] = []
        error: SqlError | None = None
        try:
            for statement in statements.split(sql, "postgresql"):
                try:
                    results.append(await self._statement(statement))
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, LINK_ERRORS):
                        raise
                    error = SqlError(errnos.postgres(exc.sqlstate), str(exc))
                    break
            rolled_back = None
            if error is not None and rollback_on_error:
                try:
                    await conn.execute("ROLLBACK")
                    rolled_back = True
                except asyncpg.PostgresError:
                    rolled_back = False
            if not shape.stateless:
                # reset() rolls back and undoes SET, LISTEN and advisory locks, not temp tables.
                await conn.reset()
                await conn.execute("DISCARD TEMP")
        except LINK_ERRORS as exc:
            raise ServerFailure(f"lost connection: {exc}", sent=True) from None
        return Outcome(results, error, rolled_back)

    async def _statement(self, sql: str) -> Rows | Write:
        prepared = await self._conn.prepare(sql)
        attributes = prepared.get_attributes()
        records = await prepared.fetch()
        if not attributes:
            return Write(_affected(prepared.get_statusmsg()), 0)
        names = [types.postgres_name(a.type.name) for a in attributes]
        fixes = self._fixes(attributes)
        rows: Sequence[Sequence[Any]] = [tuple(r) for r in records]
        if fixes:
            rows = values.apply(rows, fixes)
        if self._strict:
            names = [
                "MYSQL_TYPE_TEXT" if a.type.name == "bytea" else n
                for a, n in zip(attributes, names, strict=True)
            ]
        return Rows([a.name for a in attributes], names, rows)

    def _fixes(self, attributes: Sequence[Any]) -> list[tuple[int, values.Fix]]:
        fixes: list[tuple[int, values.Fix]] = []
        for i, attribute in enumerate(attributes):
            name = attribute.type.name
            if name == "bool":
                fixes.append((i, _to_int))
            elif name == "bytea":
                fixes.append((i, values.null if self._strict else values.b64))
            elif name == "int8" and self._strict:
                fixes.append((i, float))
        return fixes

    async def info(self, key: str) -> Any:
        """Answer DBSlayer's info flags with PostgreSQL's nearest equivalents."""
        conn = self._conn
        if key == "STAT":
            row = await conn.fetchrow(
                "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::bigint,"
                " (SELECT count(*) FROM pg_stat_activity),"
                " (SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database)::bigint"
            )
            assert row is not None
            return f"Uptime: {row[0]}  Threads: {row[1]}  Questions: {row[2]}"
        if key == "CLIENT_INFO":
            return CLIENT_VERSION
        if key == "CLIENT_VERSION":
            return types.version_number(CLIENT_VERSION)
        if key == "HOST_INFO":
            return f"{self._connector.address.host} via TCP/IP"
        if key == "SERVER_VERSION":
            version = conn.get_server_version()
            return version.major * 10000 + version.minor * 100 + version.micro
        raise KeyError(key)

    async def ping(self) -> None:
        """Run an empty query."""
        try:
            await self._conn.execute("SELECT 1")
        except (*LINK_ERRORS, asyncpg.PostgresError) as exc:
            raise ServerFailure(f"ping failed: {exc}", sent=True) from None

    async def close(self) -> None:
        """Close politely."""
        try:
            await asyncio.wait_for(self._conn.close(), 1.0)
        except (*LINK_ERRORS, TimeoutError, asyncpg.PostgresError):
            self._conn.terminate()

    async def abort(self) -> None:
        """End the backend process from a fresh connection, then drop this one."""
        pid = self._conn.get_server_pid()
        self._conn.terminate()
        try:
            killer = await self._connector.connect()
        except ServerFailure:
            return
        try:
            await asyncio.wait_for(
                killer._conn.execute("SELECT pg_terminate_backend($1)", pid), 2.0
            )
        except (*LINK_ERRORS, TimeoutError, asyncpg.PostgresError):
            pass
        finally:
            killer._conn.terminate()


def _affected(status: str | None) -> int:
    """``'INSERT 0 3'`` → 3; statements without a row count → 0."""
    last = (status or "").rpartition(" ")[2]
    return int(last) if last.isdigit() else 0
