"""What running a request's SQL produced: plain values shared by backends, gateway and wire.

Named tuples rather than frozen dataclasses: several are built per request, and a frozen
dataclass costs three times as much to construct.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class Rows(NamedTuple):
    """A statement's result set; values are already in their JSON-ready form."""

    header: list[str]
    types: list[str]
    rows: Sequence[Sequence[Any]]


class Write(NamedTuple):
    """A statement without a result set."""

    affected_rows: int
    insert_id: int


class SqlError(NamedTuple):
    """An error the database reported, as a MySQL error number and message."""

    errno: int
    message: str


class Outcome(NamedTuple):
    """Everything one request's SQL produced, in statement order.

    ``error`` is the error that stopped the batch, after the results before it; ``rolled_back``
    says whether the ROLLBACK asked for by ``ROLLBACK_ON_ERROR`` succeeded (``None``: not asked).
    """

    results: list[Rows | Write]
    error: SqlError | None = None
    rolled_back: bool | None = None
