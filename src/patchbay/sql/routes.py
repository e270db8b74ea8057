"""The DBSlayer endpoints: ``/db``, ``/dbform``, ``/stats*`` and ``/shutdown``.

Independent of the HTTP server: ``DBSlayer.handle`` takes a path, a raw query string and the
two socket addresses, and returns a ``Reply``. Every failure keeps DBSlayer's convention, HTTP 200
with an ``ERROR`` (or ``MYSQL_ERROR``) member, including the ones beta-18 never had; their
``ERROR`` strings are ``"<code>: <message>"`` with the codes of ``errors.py``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Final

from patchbay.errors import PatchbayError
from patchbay.http import TEXT, Reply
from patchbay.sql import wire
from patchbay.sql.gateway import Database
from patchbay.stats import Stats

PATHS: Final = frozenset(
    {
        "/db",
        "/dbform",
        "/stats",
        "/stats/log",
        "/stats/error",
        "/stats/errors",
        "/stats/args",
        "/shutdown",
    }
)


class DBSlayer:
    """DBSlayer's HTTP interface over a set of named databases."""

    def __init__(
        self,
        databases: Mapping[str, Database],
        *,
        stats: Stats,
        strict: bool,
        max_request_bytes: int,
        args: str,
        shutdown: Callable[[], None],
    ) -> None:
        self.databases = databases
        self.default = next(iter(databases.values()), None)
        self.stats = stats
        self.strict = strict
        self.limit = max_request_bytes
        self.args = args
        self.shutdown = shutdown

    async def handle(self, path: str, query: bytes, peer: str | None, local: str | None) -> Reply:
        """Answer one request to a DBSlayer path."""
        if path == "/db":
            try:
                command = wire.decode_db(query, limit=self.limit)
            except wire.WireError as exc:
                return self._reply(exc.body(), None, error=exc.message)
            return await self.run(command)
        if path == "/dbform":
            try:
                command = wire.decode_form(query, limit=self.limit)
            except wire.WireError as exc:
                return self._reply(exc.body(), None, error=exc.message)
            return await self.run(command)
        if path == "/stats":
            return self._reply(self.stats.summary(), None)
        if path == "/stats/log":
            return self._reply(list(self.stats.log), None)
        if path in ("/stats/error", "/stats/errors"):
            return self._reply(list(self.stats.errors), None)
        if path == "/stats/args":
            return Reply(200, TEXT, self.args.encode())
        if path == "/shutdown":
            return self._shutdown(peer, local)
        return Reply(404, TEXT, b"Not Found")

    async def run(self, command: dict[str, Any]) -> Reply:
        """Carry out a decoded command object."""
        form = command.get("FORMAT")
        if not wire.has_action(command):
            return self._reply({"ERROR": wire.TRY_ERROR}, form, error=wire.TRY_ERROR)
        name = command.get("SERVER")
        database = (
            self.default
            if name is None
            else self.databases.get(name)
            if isinstance(name, str)
            else None
        )
        if database is None:
            message = wire.NO_DATABASE if name is None else wire.UNKNOWN_SERVER
            body: dict[str, Any] = {"ERROR": message}
            if isinstance(name, str):
                body["SERVER"] = name
            return self._reply(body, form, error=message)
        out: dict[str, Any] = {}
        error: str | None = None
        sql = wire.sql_of(command)
        flags = sql is None or len(command) > 1
        try:
            if sql is not None:
                outcome = await database.execute(
                    sql, rollback_on_error=wire.flag(command, "ROLLBACK_ON_ERROR")
                )
                out.update(wire.outcome_fields(outcome, strict=self.strict))
                out["SERVER"] = database.name
                if outcome.error is not None:
                    error = outcome.error.message
            if flags:  # a lone SQL key, the usual request, has no flags to read
                keys = [k for k in wire.INFO_FLAGS if wire.flag(command, k)]
                if keys:
                    out.update(await database.info(keys))
        except PatchbayError as exc:
            error = f"{exc.code}: {exc.message}"
            out["ERROR"] = error
            out["SERVER"] = database.name
        if flags:
            if wire.flag(command, "SLAYER_HELP"):
                out["SLAYER_HELP"] = wire.SLAYER_HELP
            if wire.flag(command, "SLAYER_DEBUG_RETURN_INPUT"):
                out["SLAYER_DEBUG_RETURN_INPUT"] = command
        return self._reply(out, form, error=error)

    def _reply(self, value: Any, form: object, *, error: str | None = None) -> Reply:
        try:
            body, content_type = wire.encode(value, form, strict=self.strict)
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            message = f"cannot encode the result as {form}: {exc}"
            body, content_type = wire.encode({"ERROR": message}, None, strict=self.strict)
            error = message
        return Reply(200, content_type, body, error)

    def _shutdown(self, peer: str | None, local: str | None) -> Reply:
        """Stop the whole server, only for a loopback peer connected to its own address."""
        if peer is None or local is None or peer != local or not _loopback(peer):
            return Reply(403, TEXT, b"You are not authorized!")
        self.shutdown()
        return Reply(200, TEXT, b"going down")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
