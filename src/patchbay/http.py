"""The values every endpoint speaks in: a ``Request`` with its body, and a ``Reply``.

The SQL hot path does not build a ``Request``: the server hands ``App.respond`` the few fields
it reads. Endpoints that need headers and a body (``/hooks/...``) get the whole ``Request``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

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


def error_reply(exc: PatchbayError, *headers: tuple[bytes, bytes]) -> Reply:
    """The one JSON error shape, with the error's HTTP status."""
    return Reply(exc.status, JSON, orjson.dumps(exc.to_json()), exc.message, headers)
