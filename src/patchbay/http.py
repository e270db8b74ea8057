"""The values every endpoint speaks in: a ``Request`` with its body, and a ``Reply``.

The SQL hot path does not build a ``Request``: the server hands ``App.respond`` the few fields
it reads. Endpoints that need headers and a body (``/hooks/...``) get the whole ``Request``.
Uploads (``/v1/crm/...``) get theirs spooled: past a megabyte it is in a temporary file, not in
memory, and ``Request.chunks`` reads it back a piece at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Final, NamedTuple

import orjson

from patchbay.errors import PatchbayError

TEXT: Final = b"text/plain; charset=utf-8"
JSON: Final = b"application/json"


class Reply(NamedTuple):
    """An HTTP answer; ``error`` is what ``/stats/error`` should record, if anything."""

    status: int
    content_type: bytes
    body: bytes
    error: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Request:
    """A whole HTTP request: header names lower-case, values decoded as Latin-1."""

    method: str
    path: str
    query: bytes
    headers: Mapping[str, str]
    body: bytes
    peer: str | None = None
    spool: IO[bytes] | None = None  # the body, when spooled (``body`` is then empty)

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        """The body, ``size`` bytes at a time, wherever it is kept."""
        if self.spool is None:
            yield from (self.body[i : i + size] for i in range(0, len(self.body), size))
            return
        self.spool.seek(0)
        while chunk := self.spool.read(size):
            yield chunk

    def read(self) -> bytes:
        """The whole body in memory (for bodies known to be small)."""
        return self.body if self.spool is None else b"".join(self.chunks())


def error_reply(exc: PatchbayError, *headers: tuple[bytes, bytes]) -> Reply:
    """The one JSON error shape, with the error's HTTP status."""
    return Reply(exc.status, JSON, orjson.dumps(exc.to_json()), exc.message, headers)
