"""What a request's SQL is: its statements, whether it only reads, whether it leaves session state.

The answers route requests (reads are spread over a group, writes go to the first server),
decide whether a pooled connection must be reset before reuse, and split a batch into
statements for drivers that run one at a time. Splitting uses sqlglot's SQL lexer (quotes,
comments, PostgreSQL dollar quoting), never ``split(";")``. Lexing costs tens of microseconds,
so the common case (one plain statement with no ``;``, comment, variable or locking clause
anywhere in its text) is recognised by a regular expression and never lexed. Every doubt falls
to the safe side: treated as a write, reset afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import sqlglot
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

# Plain substring tests (a regular expression with word boundaries cost 10x more): any of these
# anywhere in the text, even inside a string literal or a longer word, sends it to the lexer.
_RISKY: Final = (
    ";",
    "@",
    "#",
    "$",
    "--",
    "/*",
    "for",
    "lock",
    "nextval",
    "setval",
    "last_insert_id",
    "\\",
)
_READ_WORDS: Final = ("select", "show", "describe", "desc", "explain", "values")
_WRITE_WORDS: Final = ("insert", "update", "delete", "replace")

_READ_TOKENS: Final = frozenset(
    {TokenType.SELECT, TokenType.SHOW, TokenType.DESCRIBE, TokenType.VALUES}
)
_STATELESS_TOKENS: Final = _READ_TOKENS | frozenset(
    {TokenType.INSERT, TokenType.UPDATE, TokenType.DELETE, TokenType.REPLACE}
)
_RISKY_WORDS: Final = frozenset({"LOCK", "GET_LOCK", "NEXTVAL", "SETVAL", "LAST_INSERT_ID"})
DIALECTS: Final = {"mysql": "mysql", "postgresql": "postgres", "sqlite": "sqlite"}


@dataclass(frozen=True, slots=True)
class Shape:
    """What a request's SQL does.

    ``read``: every statement only reads, so any server of the group may run it and it may be
    retried elsewhere. ``stateless``: no statement can leave session state (``USE``, ``SET``,
    variables, an open transaction, locks) behind on the connection.
    """

    read: bool
    stateless: bool


UNKNOWN: Final = Shape(read=False, stateless=False)
READ: Final = Shape(read=True, stateless=True)
STATELESS_WRITE: Final = Shape(read=False, stateless=True)


def shape(sql: str, dialect: str) -> Shape:
    """Classify ``sql`` for the given backend kind (``mysql``, ``postgresql``, ``sqlite``)."""
    low = sql.lower()
    for risky in _RISKY:
        if risky in low:
            return _lexed_shape(sql, dialect)
    first = low.split(None, 1)[0] if low.strip() else ""
    if first in _READ_WORDS and "into" not in low:
        return READ
    if first in _WRITE_WORDS:
        return STATELESS_WRITE
    return _lexed_shape(sql, dialect)


@lru_cache(maxsize=1024)
def _lexed_shape(sql: str, dialect: str) -> Shape:
    statements = _token_statements(sql, dialect)
    if statements is None or not statements:
        return UNKNOWN
    read = stateless = True
    for tokens in statements:
        first = tokens[0].token_type
        risky = any(
            t.token_type == TokenType.PARAMETER
            or t.text.upper() in _RISKY_WORDS
            or (t.token_type == TokenType.FOR and i + 1 < len(tokens))
            or (t.token_type == TokenType.INTO and first == TokenType.SELECT)
            for i, t in enumerate(tokens)
        )
        if risky or first not in _READ_TOKENS:
            read = False
        if risky or first not in _STATELESS_TOKENS:
            stateless = False
    return Shape(read=read, stateless=stateless)


def split(sql: str, dialect: str) -> list[str]:
    """Split a batch into its statements, in order, without the separating semicolons.

    Text the lexer cannot read is returned whole, so that the database reports the error.
    """
    if ";" not in sql:
        return [sql]
    statements = _token_statements(sql, dialect)
    if statements is None:
        return [sql]
    return [sql[tokens[0].start : tokens[-1].end + 1] for tokens in statements]


def _token_statements(sql: str, dialect: str) -> list[list[Any]] | None:
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECTS.get(dialect, dialect)).tokenize(sql)
    except (TokenError, ValueError):
        return None
    statements: list[list[Any]] = [[]]
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            statements.append([])
        else:
            statements[-1].append(token)
    return [s for s in statements if s]
