"""MySQL and MariaDB through asyncmy (Cython), the fastest asyncio MySQL driver measured here.

Values are converted inside the driver (``conv``): integers become ``int``, floating-point
columns ``float``, everything else stays the server's text, so no ``Decimal`` or ``datetime`` is
ever built. In strict mode BIGINT and DECIMAL become ``float`` too, exactly as DBSlayer beta-18
prints them; in the default mode BIGINT stays exact and ``values.decimal``, called by the driver,
decides how to write each DECIMAL. All statements of a request go to the server in one
``COM_QUERY`` (asyncmy always sets ``CLIENT_MULTI_STATEMENTS``) and results are read in order.
asyncmy has no public API for result metadata, ``COM_STATISTICS`` or ``COM_RESET_CONNECTION``,
so this module reaches into ``conn._result`` and ``conn._execute_command``; the tests pin them.

``?unix_socket=/path`` in the URL connects through that Unix socket instead of TCP (host and
port are then ignored, as libmysqlclient does). On one machine it is the cheaper transport:
loopback TCP costs the gateway a kernel TCP send and receive per query.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import asyncmy
from asyncmy import errors as myerrors

from patchbay.sql import types, values
from patchbay.sql.backends.base import Address, ServerFailure
from patchbay.sql.results import Outcome, Rows, SqlError, Write
from patchbay.sql.statements import Shape

COM_QUERY: Final = 0x03
COM_STATISTICS: Final = 0x09
COM_RESET_CONNECTION: Final = 0x1F
# Client-side error numbers that mean the link, not the SQL, failed (CR_* in errmsg.h).
LINK_ERRORS: Final = frozenset({0, 2002, 2003, 2005, 2006, 2013, 2014, 2055})
CLIENT_VERSION: Final = importlib.metadata.version("asyncmy")
MAX_PIPELINED_BYTES: Final = 0xFFFFFF - 1  # one packet: its length field is 3 bytes

Fix = Callable[[Any], Any]


def _conv(strict: bool) -> dict[int, Callable[[Any], Any]]:
    conv: dict[int, Callable[[Any], Any]] = {code: int for code in types.INTEGER_CODES}
    conv.update({code: float for code in types.FLOAT_CODES})
    conv[types.LONGLONG] = float if strict else int
    conv.update({code: float if strict else values.decimal for code in types.DECIMAL_CODES})
    return conv


class MySQLConnector:
    """Opens asyncmy connections to one MySQL or MariaDB server."""

    kind = "mysql"

    def __init__(self, url: str, *, strict: bool, connect_timeout: float) -> None:
        self.url = url
        self.address = Address.parse(url, port=3306, user="root")
        self.database = self.address.database
        self.unix_socket = unix_socket(url)
        self.strict = strict
        self.connect_timeout = connect_timeout
        self._conv = _conv(strict)

    async def connect(self) -> MySQLConnection:
        """Open a connection in autocommit mode."""
        try:
            conn = await asyncio.wait_for(
                asyncmy.connect(
                    host=self.address.host,
                    port=self.address.port,
                    unix_socket=self.unix_socket,
                    user=self.address.user,
                    password=self.address.password,
                    database=self.address.database,
                    autocommit=True,
                    conv=self._conv,
                    charset="utf8mb4",
                    connect_timeout=self.connect_timeout,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            message = f"connect timed out after {self.connect_timeout:g} s"
            raise ServerFailure(message, sent=False) from None
        except (OSError, RuntimeError, myerrors.MySQLError) as exc:
            raise ServerFailure(f"cannot connect: {_message(exc)}", sent=False) from None
        return MySQLConnection(conn, self)

    async def aclose(self) -> None:
        """Nothing to release: connections are the pool's."""


class MySQLConnection:
    """One asyncmy connection."""

    def __init__(self, conn: Any, connector: MySQLConnector) -> None:
        self._conn = conn
        self._connector = connector
        self._strict = connector.strict
        self._fixes: dict[tuple[tuple[int, int], ...], tuple[list[str], list[tuple[int, Fix]]]] = {}

    def alive(self) -> bool:
        """Whether the socket is still open."""
        return bool(self._conn._connected)

    async def run(self, sql: str, *, rollback_on_error: bool, shape: Shape) -> Outcome:
        """Send the whole batch at once and read every result in order."""
        try:
            conn = self._conn
            await conn._execute_command(COM_QUERY, sql.encode(conn._encoding, "surrogateescape"))
        except (OSError, myerrors.MySQLError) as exc:
            raise ServerFailure(_message(exc), sent=True) from None
        outcome = await self.receive()
        try:
            if outcome.error is not None and rollback_on_error:
                outcome = Outcome(outcome.results, outcome.error, await self._rollback())
            if not shape.stateless:
                await self._reset()
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ServerFailure(f"lost connection: {exc}", sent=True) from None
        return outcome

    def send(self, sqls: Sequence[str]) -> None:
        """Write one ``COM_QUERY`` per text in a single write, without waiting for answers.

        The server runs them one after another, as if each had waited for the one before;
        ``receive`` then reads their outcomes in the same order (pipelining). Each text must be
        shorter than a protocol packet (16 MB): the gateway's requests are 1 MB at most.
        """
        encoding = self._conn._encoding
        packets = []
        for sql in sqls:
            payload = sql.encode(encoding, "surrogateescape")
            if len(payload) >= MAX_PIPELINED_BYTES:
                raise ValueError("a pipelined query must be under 16 MB")
            # Length (3 bytes), sequence id 0, the command: a packet header and COM_QUERY.
            packets.append(
                (len(payload) + 1).to_bytes(3, "little") + bytes((0, COM_QUERY)) + payload
            )
        try:
            self._conn._write_bytes(b"".join(packets))
        except (OSError, myerrors.MySQLError) as exc:
            raise ServerFailure(_message(exc), sent=True) from None

    async def receive(self) -> Outcome:
        """Read the outcome of the oldest ``COM_QUERY`` sent whose outcome is not read yet."""
        conn = self._conn
        conn._next_seq_id = 1  # every command's answer counts its packets from 1
        results: list[Rows | Write] = []
        error: SqlError | None = None
        try:
            try:
                await conn._read_query_result()
                while True:
                    results.append(self._read(conn._result))
                    if not conn._result.has_next:
                        break
                    await conn.next_result()
            except myerrors.MySQLError as exc:
                errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                if errno in LINK_ERRORS or not conn._connected:
                    raise ServerFailure(_message(exc), sent=True) from None
                error = SqlError(errno, _message(exc))
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ServerFailure(f"lost connection: {exc}", sent=True) from None
        return Outcome(results, error, None)

    def _read(self, result: Any) -> Rows | Write:
        if not result.field_count:
            return Write(result.affected_rows, result.insert_id)
        key = tuple((f.type_code, f.charsetnr) for f in result.fields)
        plan = self._fixes.get(key)
        if plan is None:
            plan = self._plan(key)
            self._fixes[key] = plan
        type_names, fixes = plan
        rows: Sequence[Sequence[Any]] = result.rows or ()
        if fixes:
            rows = values.apply(rows, fixes)
        return Rows([f.name for f in result.fields], type_names, rows)

    def _plan(self, key: tuple[tuple[int, int], ...]) -> tuple[list[str], list[tuple[int, Fix]]]:
        strict = self._strict
        names = []
        fixes: list[tuple[int, Fix]] = []
        for i, (code, charset) in enumerate(key):
            names.append(types.mysql_name(code, charset, strict=strict))
            fix = values.mysql_fix(code, charset, strict=strict)
            if fix is not None:
                fixes.append((i, fix))
        if strict and types.UNKNOWN in names:
            # beta-18 writes no value for a column of a type it does not know.
            keep = [i for i, n in enumerate(names) if n != types.UNKNOWN]
            fixes.append((-1, values.keep_columns(keep)))
        return names, fixes

    async def _rollback(self) -> bool:
        try:
            await self._conn.query("ROLLBACK")
        except myerrors.MySQLError:
            return False
        return True

    async def _reset(self) -> None:
        """Undo ``USE``, ``SET``, variables, open transactions: ``COM_RESET_CONNECTION``."""
        conn = self._conn
        try:
            await conn._execute_command(COM_RESET_CONNECTION, b"")
            await conn._read_ok_packet()
            await conn.query("SET NAMES utf8mb4")
            if self._connector.database:
                await conn.select_db(self._connector.database)
        except myerrors.MySQLError as exc:
            raise ServerFailure(
                f"cannot reset the connection: {_message(exc)}", sent=True
            ) from None

    async def info(self, key: str) -> Any:
        """Answer DBSlayer's info flags as libmysqlclient would."""
        conn = self._conn
        if key == "STAT":
            await conn._execute_command(COM_STATISTICS, b"")
            packet = await conn.read_packet()
            return packet.get_all_data().decode("utf-8", "replace")
        if key == "CLIENT_INFO":
            return CLIENT_VERSION
        if key == "CLIENT_VERSION":
            return types.version_number(CLIENT_VERSION)
        if key == "HOST_INFO":
            if self._connector.unix_socket is not None:
                return "Localhost via UNIX socket"  # libmysqlclient's words
            return f"{self._connector.address.host} via TCP/IP"
        if key == "SERVER_VERSION":
            return types.version_number(conn.get_server_info())
        raise KeyError(key)

    async def ping(self) -> None:
        """Send ``COM_PING``."""
        try:
            await self._conn.ping(reconnect=False)
        except (OSError, myerrors.MySQLError) as exc:
            raise ServerFailure(f"ping failed: {_message(exc)}", sent=True) from None

    async def close(self) -> None:
        """Send ``COM_QUIT`` and close."""
        try:
            await asyncio.wait_for(self._conn.ensure_closed(), 1.0)
        except (OSError, TimeoutError, myerrors.MySQLError):
            self._conn.close()

    async def abort(self) -> None:
        """Kill the connection's thread on the server from a fresh connection, then drop it."""
        thread_id = self._conn.thread_id()
        self._conn.close()
        try:
            killer = await self._connector.connect()
        except ServerFailure:
            return
        try:
            await asyncio.wait_for(killer._conn.query(f"KILL {int(thread_id)}"), 2.0)
        except (OSError, TimeoutError, myerrors.MySQLError):
            pass
        finally:
            killer._conn.close()


def unix_socket(url: str) -> str | None:
    """The ``unix_socket`` parameter of a MySQL URL, if it names one."""
    paths = parse_qs(urlsplit(url).query).get("unix_socket")
    return paths[-1] if paths else None


def _message(exc: BaseException) -> str:
    if isinstance(exc, myerrors.MySQLError) and len(exc.args) >= 2:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__
