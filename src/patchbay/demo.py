"""The demo SQLite database that ``patchbay serve`` creates on first start with no ``--db``."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

ROWS = 1000


def ensure(path: Path) -> Path:
    """Create the demo database at ``path`` unless it exists; return the path."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    conn = sqlite3.connect(partial)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(64), "
            "price DECIMAL(10,2), created TIMESTAMP)"
        )
        base = datetime(2024, 1, 1)
        conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?)",
            (
                (
                    i,
                    f"item-{i:06d}",
                    ((i * 7919) % 999999 + 1) / 100,
                    (base + timedelta(seconds=i * 37)).strftime("%Y-%m-%d %H:%M:%S"),
                )
                for i in range(1, ROWS + 1)
            ),
        )
        conn.commit()
    finally:
        conn.close()
    partial.rename(path)
    return path
