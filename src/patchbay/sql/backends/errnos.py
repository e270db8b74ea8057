"""PostgreSQL and SQLite errors as the MySQL error numbers DBSlayer clients branch on."""

from __future__ import annotations

from typing import Final

UNKNOWN_ERROR: Final = 1105  # ER_UNKNOWN_ERROR

# SQLSTATE → MySQL errno, where one fits.
POSTGRES: Final[dict[str, int]] = {
    "42P01": 1146,  # undefined_table → ER_NO_SUCH_TABLE
    "42703": 1054,  # undefined_column → ER_BAD_FIELD_ERROR
    "42601": 1064,  # syntax_error → ER_PARSE_ERROR
    "42883": 1305,  # undefined_function → ER_SP_DOES_NOT_EXIST
    "42P07": 1050,  # duplicate_table → ER_TABLE_EXISTS_ERROR
    "42701": 1060,  # duplicate_column → ER_DUP_FIELDNAME
    "42501": 1142,  # insufficient_privilege → ER_TABLEACCESS_DENIED_ERROR
    "42702": 1052,  # ambiguous_column → ER_NON_UNIQ_ERROR
    "23505": 1062,  # unique_violation → ER_DUP_ENTRY
    "23503": 1452,  # foreign_key_violation → ER_NO_REFERENCED_ROW_2
    "23502": 1048,  # not_null_violation → ER_BAD_NULL_ERROR
    "23514": 4025,  # check_violation → ER_CONSTRAINT_FAILED
    "22012": 1365,  # division_by_zero → ER_DIVISION_BY_ZERO
    "22001": 1406,  # string_data_right_truncation → ER_DATA_TOO_LONG
    "22003": 1264,  # numeric_value_out_of_range → ER_WARN_DATA_OUT_OF_RANGE
    "22P02": 1366,  # invalid_text_representation → ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
    "40P01": 1213,  # deadlock_detected → ER_LOCK_DEADLOCK
    "55P03": 1205,  # lock_not_available → ER_LOCK_WAIT_TIMEOUT
    "57014": 1317,  # query_canceled → ER_QUERY_INTERRUPTED
    "3D000": 1049,  # invalid_catalog_name → ER_BAD_DB_ERROR
    "28P01": 1045,  # invalid_password → ER_ACCESS_DENIED_ERROR
    "25P02": 1180,  # in_failed_sql_transaction → ER_ERROR_DURING_COMMIT (nearest)
    "42000": 1064,
}

# SQLite extended result code names (and message prefixes) → MySQL errno.
SQLITE_CODES: Final[dict[str, int]] = {
    "SQLITE_CONSTRAINT_UNIQUE": 1062,
    "SQLITE_CONSTRAINT_PRIMARYKEY": 1062,
    "SQLITE_CONSTRAINT_NOTNULL": 1048,
    "SQLITE_CONSTRAINT_FOREIGNKEY": 1452,
    "SQLITE_CONSTRAINT_CHECK": 4025,
    "SQLITE_BUSY": 1205,
    "SQLITE_LOCKED": 1205,
    "SQLITE_INTERRUPT": 1317,
    "SQLITE_READONLY": 1290,
    "SQLITE_TOOBIG": 1153,
}
SQLITE_MESSAGES: Final[tuple[tuple[str, int], ...]] = (
    ("no such table", 1146),
    ("no such column", 1054),
    ("syntax error", 1064),
    ("incomplete input", 1064),
    ("unrecognized token", 1064),
    ("no such function", 1305),
    ("already exists", 1050),
    ("ambiguous column", 1052),
    ("duplicate column", 1060),
    ("interrupted", 1317),
)


def postgres(sqlstate: str | None) -> int:
    """The MySQL errno for a PostgreSQL SQLSTATE."""
    return POSTGRES.get(sqlstate or "", UNKNOWN_ERROR)


def sqlite(code_name: str | None, message: str) -> int:
    """The MySQL errno for a SQLite error."""
    if code_name in SQLITE_CODES:
        return SQLITE_CODES[code_name]
    lowered = message.lower()
    for prefix, errno in SQLITE_MESSAGES:
        if prefix in lowered:
            return errno
    return UNKNOWN_ERROR
