"""Classifying and splitting SQL with the lexer."""

from __future__ import annotations

import pytest

from patchbay.sql.statements import Shape, shape, split


@pytest.mark.parametrize(
    ("sql", "read", "stateless"),
    [
        ("SELECT 1", True, True),
        ("  select id FROM items WHERE id=42", True, True),
        ("SELECT 1; SELECT 2", True, True),
        ("INSERT INTO t VALUES (1)", False, True),
        ("UPDATE t SET a=1", False, True),
        ("use test; SELECT 1", False, False),
        ("SET @x = 1", False, False),
        ("SELECT @x := 1", False, False),
        ("BEGIN", False, False),
        ("SELECT * FROM t FOR UPDATE", False, False),
        ("SELECT a INTO @v FROM t", False, False),
        ("SELECT GET_LOCK('a', 1)", False, False),
        ("SELECT nextval('s')", False, False),
        ("SELECT 1 -- ; DROP TABLE t", True, True),
        ("CREATE TABLE t (a int)", False, False),
        ("SELECT 'unterminated", True, True),
        ("INSERT INTO t SELECT * FROM u", False, True),
    ],
)
def test_shape(sql: str, read: bool, stateless: bool) -> None:
    """Reads and session-state effects are classified, every doubt as a write."""
    assert shape(sql, "mysql") == Shape(read=read, stateless=stateless)


def test_split_respects_quotes_comments_and_dollar_quoting() -> None:
    """Semicolons inside strings, comments and $$ bodies do not split."""
    sql = (
        "SELECT 'a;b'; /* ; */ CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ "
        'LANGUAGE sql;; SELECT "x;y" FROM t'
    )
    assert split(sql, "postgresql") == [
        "SELECT 'a;b'",
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql",
        'SELECT "x;y" FROM t',
    ]


def test_split_without_semicolon_is_one_statement() -> None:
    """A statement with no semicolon is returned untouched."""
    assert split("SELECT 1", "sqlite") == ["SELECT 1"]


def test_split_leaves_unlexable_text_whole() -> None:
    """Text the lexer cannot read goes to the database whole, which reports the error."""
    assert split("SELECT 'oops; SELECT 2", "sqlite") == ["SELECT 'oops; SELECT 2"]
