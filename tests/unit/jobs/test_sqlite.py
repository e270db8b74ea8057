"""The SQLite job store: the shared contract, plus what only a file shared by processes needs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from patchbay.jobs import sqlite_writer
from patchbay.jobs.model import Message, NewJob, Status
from patchbay.jobs.sqlite import SqliteStore
from patchbay.jobs.store import Store, StoreUnavailable
from tests.unit.jobs.contract import FakeClock, Opener, StoreContract, message

# Run in another process: open the store, say "ready", wait for the go file, then race.
# Modes: "put" 100 messages, "take" 100 calls from one budget, or claim as the owner named.
RACER = """
import asyncio, json, sys, time
from pathlib import Path
from patchbay.jobs.model import Message, NewJob
from patchbay.jobs.sqlite import SqliteStore

async def main(path: str, mode: str, go: str) -> None:
    # Takes run on a clock that stands still, so only the budget can refuse a call.
    store = SqliteStore(path, clock=(lambda: 1_700_000_000.0) if mode == "take" else time.time)
    await store.open()
    print("ready", flush=True)
    while not Path(go).exists():
        await asyncio.sleep(0.002)
    out = []
    if mode == "take":
        out = [await store.take("zoho", 60, 60) for _ in range(100)]
    elif mode == "put":
        for i in range(100):
            put = await store.put(Message("race", f"k{i}", b"", {}, (NewJob("q", "t"),)))
            out.append([put.message_id, put.created])
    else:
        while claims := await store.claim("q", mode, limit=3, lease=300):
            for claim in claims:
                out.append(claim.job.id)
                assert await store.succeed(claim.job.id, mode)
    await store.close()
    print(json.dumps(out), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


async def race(path: Path, modes: list[str]) -> list[Any]:
    """Run one racing process per mode on the store at ``path``, started together."""
    go = path.with_name("go")
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            str(path),
            mode,
            str(go),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for mode in modes
    ]
    for proc in procs:
        assert proc.stdout is not None
        if (await proc.stdout.readline()).strip() != b"ready":
            _, err = await proc.communicate()
            pytest.fail(f"racer did not start: {err.decode()}")
    go.touch()
    results = []
    for proc in procs:
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    return results


class TestSqliteContract(StoreContract):
    """The shared contract on one SQLite file."""

    @pytest.fixture
    async def opener(self, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Opener]:
        """Opens stores on one file, each with its own writer process and connection."""
        opened: list[SqliteStore] = []

        async def open_store() -> Store:
            store = SqliteStore(tmp_path / "jobs.db", clock=clock)
            opened.append(store)
            await store.open()
            return store

        yield open_store
        for store in opened:
            await store.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open SQLite store with the real clock."""
    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    yield store
    await store.close()


async def test_file_is_wal_with_full_sync(store: SqliteStore) -> None:
    """The file is in WAL mode and the store's connection commits with synchronous=FULL."""
    (sync,) = await store._call("execute", "PRAGMA synchronous", (), "one")
    assert sync == 2
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def count_groups(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many operations each of the writer's answers covers, from now on.

    The writer answers once per group it took from its socket; a group of puts alone is one
    statement and one commit, any other group one transaction and one commit.
    """
    groups: list[int] = []
    answered = store._answered

    def counted(outcomes: list[Any], woken: list[str]) -> None:
        groups.append(len(outcomes))
        answered(outcomes, woken)

    monkeypatch.setattr(store, "_answered", counted)
    return groups


async def test_puts_share_commits_and_are_committed_when_they_resolve(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent puts are group-committed, and each is visible to others once it resolves."""
    groups = count_groups(store, monkeypatch)
    puts = await asyncio.gather(*(store.put(message(f"k{i}")) for i in range(64)))
    assert all(p.created for p in puts)
    assert sum(groups) == 64
    assert 1 <= len(groups) <= 8
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 64
    finally:
        conn.close()


async def test_job_outcomes_and_claims_share_commits_with_puts(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Successes, claims and puts sent together are written in few transactions and commits."""
    await asyncio.gather(*(store.put(message(f"a{i}")) for i in range(16)))
    claims = await store.claim("q", "w", limit=16, lease=60)
    assert len(claims) == 16
    groups = count_groups(store, monkeypatch)
    done, more, puts = await asyncio.gather(
        asyncio.gather(*(store.succeed(c.job.id, "w") for c in claims)),
        store.claim("q", "w", limit=16, lease=60),
        asyncio.gather(*(store.put(message(f"b{i}")) for i in range(16))),
    )
    assert all(done)
    assert all(p.created for p in puts)
    assert len(more) in (0, 16)  # the claim may come before or after the puts in the group
    assert sum(groups) == 33
    assert len(groups) <= 4  # the writer may have started on the first before the rest came
    assert (await store.counts("q"))[Status.SUCCEEDED] == 16


async def test_a_put_whose_id_another_process_took_gets_a_fresh_one(store: SqliteStore) -> None:
    """A fast-path put whose next id another process used meanwhile is stored under a new id."""
    first = await store.put(message("a"))
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        # The id the store would give the next message, taken by another writer's row.
        other.execute(
            "INSERT INTO messages (id, stream, key, body, meta, created_at)"
            " VALUES (?, 'orders', 'theirs', x'', '{}', 0)",
            (first.message_id + 1,),
        )
    finally:
        other.close()
    second, third = await store.put(message("b")), await store.put(message("c"))
    assert second.created and third.created
    assert second.message_id == first.message_id + 2
    assert third.message_id == first.message_id + 3
    rows = sqlite3.connect(store.path)
    try:
        keys = rows.execute("SELECT id, key FROM messages ORDER BY id").fetchall()
        jobs = rows.execute("SELECT message_id FROM jobs ORDER BY id").fetchall()
    finally:
        rows.close()
    assert [key for _, key in keys] == ["a", "theirs", "b", "c"]
    assert [m for (m,) in jobs] == [first.message_id, second.message_id, third.message_id]


async def test_a_duplicate_key_in_a_fast_group_writes_nothing_of_it(store: SqliteStore) -> None:
    """A group with a stored key and new ones: new ones stored once, the old one a duplicate."""
    old = await store.put(message("k1"))
    puts = await asyncio.gather(*(store.put(message(f"k{i}")) for i in range(4)))
    assert [p.created for p in puts] == [True, False, True, True]
    assert puts[1].message_id == old.message_id
    assert (await store.counts("q"))[Status.PENDING] == 4


async def test_the_writer_keeps_a_backstop_checkpoint_far_above_its_own(
    store: SqliteStore,
) -> None:
    """SQLite's automatic checkpoint stays a backstop: the writer's checkpointer runs first."""
    (pages,) = await store._call("execute", "PRAGMA wal_autocheckpoint", (), "one")
    assert pages == sqlite_writer.BACKSTOP_PAGES


async def test_closing_the_store_ends_its_writer_process(tmp_path: Path) -> None:
    """close() commits what was sent, then the writer process exits."""
    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    assert store._process is not None
    process = store._process
    put = asyncio.create_task(store.put(message("a")))
    await asyncio.sleep(0)  # sent before the stop
    await store.close()
    assert (await put).created
    assert process.returncode == 0


async def test_a_store_reopened_at_once_after_close_works(tmp_path: Path) -> None:
    """close() then open() at once: the old writer's end does not disturb the new one."""
    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    await store.put(message("a"))
    await store.close()
    await store.open()
    try:
        async with asyncio.timeout(10):
            assert (await store.put(message("b"))).created
            assert (await store.counts("q"))[Status.PENDING] == 2
    finally:
        await store.close()


async def test_a_put_sent_while_the_store_closes_fails_instead_of_hanging(
    store: SqliteStore,
) -> None:
    """A put made after close() began either lands before the stop or gets StoreUnavailable."""
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() has sent its stop
    async with asyncio.timeout(10):
        try:
            put = await store.put(message("late"))
        except StoreUnavailable:
            pass
        else:
            assert put.created
        await closing


async def test_a_writer_that_dies_fails_its_callers_and_is_restarted(store: SqliteStore) -> None:
    """Killing the writer fails what waited for it with StoreUnavailable; the next call works."""
    assert store._process is not None
    first = store._process
    holder = sqlite3.connect(store.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the writer waits in its busy handler
        put = asyncio.create_task(store.put(message("a")))
        await asyncio.sleep(0.1)
        first.kill()
        async with asyncio.timeout(5):
            with pytest.raises(StoreUnavailable, match="writer stopped"):
                await put
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    async with asyncio.timeout(10):
        assert (await store.put(message("a"))).created
    assert store._process is not first
    assert first.returncode is not None


async def test_the_writer_ignores_the_signals_that_stop_the_server(store: SqliteStore) -> None:
    """SIGINT and SIGTERM, sent to the whole process group on a stop, leave the writer be."""
    assert store._process is not None
    process = store._process
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    assert (await store.put(message("a"))).created
    assert store._process is process and process.returncode is None


ORPHAN = """
import asyncio, os, sys
from patchbay.jobs.sqlite import SqliteStore

async def main(path: str) -> None:
    store = SqliteStore(path)
    await store.open()
    print(store._process.pid, flush=True)
    os._exit(0)  # gone without closing anything, like a SIGKILL

asyncio.run(main(sys.argv[1]))
"""


async def test_the_writer_exits_when_its_server_is_gone(tmp_path: Path) -> None:
    """A writer whose server died without closing the store exits instead of lingering."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN, str(tmp_path / "jobs.db"), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    pid = int(out)
    for _ in range(500):  # up to 5 s
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("the writer outlived its server")


async def test_a_put_waits_for_another_process_lock_without_blocking_the_loop(
    store: SqliteStore,
) -> None:
    """A put waits for another process's write lock on the thread, not the loop, then stores."""
    holder = sqlite3.connect(store.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        put = asyncio.create_task(store.put(message("a")))
        ticks = 0
        for _ in range(20):  # the loop keeps running meanwhile
            await asyncio.sleep(0.01)
            ticks += 1
        assert not put.done()
        holder.execute("ROLLBACK")
        async with asyncio.timeout(5):
            assert (await put).created
        assert ticks == 20
    finally:
        holder.close()


async def test_claims_are_read_back_by_the_writer_when_the_loop_cannot(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose read-back on the event loop's connection fails reads in the writer."""
    await asyncio.gather(
        *(store.put(message(f"k{i}", body=f"body {i}".encode())) for i in range(3))
    )
    monkeypatch.setattr(store, "_read", lambda sql, args: None)
    claims = await store.claim("q", "w", limit=10, lease=60)
    assert sorted(c.message.body for c in claims) == [b"body 0", b"body 1", b"body 2"]
    assert all(c.job.status is Status.RUNNING and c.job.attempts == 1 for c in claims)


async def test_duplicates_racing_from_two_processes_store_one_row(tmp_path: Path) -> None:
    """Two processes putting the same keys at once store each key once, with no error."""
    path = tmp_path / "jobs.db"
    first, second = await race(path, ["put", "put"])
    for (id_a, created_a), (id_b, created_b) in zip(first, second, strict=True):
        assert id_a == id_b
        assert created_a != created_b
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 100
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 100
    finally:
        conn.close()


async def test_claims_from_two_processes_never_overlap(tmp_path: Path) -> None:
    """Two processes claiming from one file together get every job exactly once."""
    path = tmp_path / "jobs.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await asyncio.gather(
            *(store.put(Message("s", f"k{i}", b"", {}, (NewJob("q", "t"),))) for i in range(200))
        )
    finally:
        await store.close()
    first, second = await race(path, ["w1", "w2"])
    assert not set(first) & set(second)
    assert len(first) + len(second) == 200
    await store.open()
    try:
        assert (await store.counts())[Status.SUCCEEDED] == 200
    finally:
        await store.close()


def count_calls(conn: sqlite3.Connection) -> int:
    """How many calls the ``calls`` table holds."""
    return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])


async def test_takes_from_two_processes_spend_the_budget_once(tmp_path: Path) -> None:
    """Two processes taking 100 calls each from a budget of 60 record exactly 60 in total."""
    path = tmp_path / "jobs.db"
    first, second = await race(path, ["take", "take"])
    waits = first + second
    assert waits.count(0.0) == 60
    assert set(waits) == {0.0, 60.0}
    conn = sqlite3.connect(path)
    try:
        assert count_calls(conn) == 60
    finally:
        conn.close()


async def test_take_prunes_calls_that_left_the_window(tmp_path: Path) -> None:
    """Calls older than the window are deleted as calls are taken, so the table stays small."""
    clock = FakeClock()
    store = SqliteStore(tmp_path / "jobs.db", clock=clock)
    await store.open()
    try:
        for _ in range(50):
            await store.take("zoho", 3, 10)
            await store.take("other", 3, 10)
            clock.advance(1)
        (count,) = await store._call("execute", "SELECT count(*) FROM calls", (), "one")
        assert count == 6  # the last 3 calls of each bucket
    finally:
        await store.close()


async def test_a_path_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    """Opening a file under a regular file raises StoreUnavailable, promptly."""
    (tmp_path / "plain").write_text("not a directory")
    store = SqliteStore(tmp_path / "plain" / "jobs.db", busy_timeout=0.1)
    async with asyncio.timeout(5):
        with pytest.raises(StoreUnavailable):
            await store.open()
    with pytest.raises(StoreUnavailable):
        await store.put(message("a"))


async def test_a_lock_held_past_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    """A write waiting longer than busy_timeout for another process's lock fails, then recovers."""
    store = SqliteStore(tmp_path / "jobs.db", busy_timeout=0.05)
    await store.open()
    holder = sqlite3.connect(store.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        async with asyncio.timeout(5):
            with pytest.raises(StoreUnavailable):
                await store.put(message("a"))
            with pytest.raises(StoreUnavailable):
                await store.claim("q", "w", limit=1, lease=1)
            with pytest.raises(StoreUnavailable):
                await store.take("zoho", 60, 60)
            with pytest.raises(StoreUnavailable):
                await store.acquire("refresh", "w", 10)
        holder.execute("ROLLBACK")
        assert (await store.put(message("a"))).created
    finally:
        holder.close()
        await store.close()


async def test_a_full_disk_is_unavailable_and_recovers(store: SqliteStore) -> None:
    """A commit that finds no room raises StoreUnavailable; the store works again afterwards."""
    (pages,) = await store._call("execute", "PRAGMA page_count", (), "one")
    await store._call("execute", f"PRAGMA max_page_count = {pages}", (), "rows")
    with pytest.raises(StoreUnavailable, match="full"):
        await store.put(message("big", body=b"x" * 1_000_000))
    # The connection was dropped with the error; its page limit went with it.
    assert (await store.put(message("big", body=b"x" * 1_000_000))).created


async def test_a_closed_store_is_unavailable(store: SqliteStore) -> None:
    """Calls on a closed store raise StoreUnavailable instead of hanging."""
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.put(message("a"))
    with pytest.raises(StoreUnavailable):
        await store.counts()
    with pytest.raises(StoreUnavailable):
        await store.get_value("token")
    with pytest.raises(StoreUnavailable):
        await store.take("zoho", 60, 60)
