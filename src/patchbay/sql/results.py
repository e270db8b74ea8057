"""What running a request's SQL produced: plain values shared by backends, gateway and wire."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Rows:
    """A statement's result set; values are already in their JSON-ready form."""

    header: list[str]
    types: list[str]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Write:
    """A statement without a result set."""

    affected_rows: int
    insert_id: int


@dataclass(frozen=True, slots=True)
class SqlError:
    """An error the database reported, as a MySQL error number and message."""

    errno: int
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything one request's SQL produced, in statement order.

    ``error`` is the error that stopped the batch, after the results before it; ``rolled_back``
    says whether the ROLLBACK asked for by ``ROLLBACK_ON_ERROR`` succeeded (``None``: not asked).
    """

    results: list[Rows | Write] = field(default_factory=list)
    error: SqlError | None = None
    rolled_back: bool | None = None
