"""The SQLite backend's inline reads: bounded, and correct when they move to a thread."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from patchbay.sql.backends import sqlite as backend
from patchbay.sql.statements import READ

LONG = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)"
    " SELECT count(*) FROM c"
)


async def test_inline_read_gives_up_within_its_budget(tmp_path: Path) -> None:
    """A slow read run inline stops after about the budget and reports that it needs a thread."""
    sqlite3.connect(tmp_path / "x.db").close()
    connector = backend.SQLiteConnector(f"sqlite:///{tmp_path}/x.db", strict=False, threads=1)
    conn = await connector.connect()
    began = time.perf_counter()
    assert conn._run_inline(LONG, False) is None
    assert time.perf_counter() - began < backend.INLINE_BUDGET + 0.01
    quick = conn._run_inline("SELECT 1", False)
    assert quick is not None and quick.results[0].rows == [(1,)]  # type: ignore[union-attr]
    outcome = await conn.run(LONG, rollback_on_error=False, shape=READ)
    assert outcome.results[0].rows == [(200000,)]  # type: ignore[union-attr]
    await conn.close()
    await connector.aclose()
