"""The SQLite job store: the shared contract, plus what only a file shared by processes needs."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from patchbay.jobs import sqlite as sqlite_store
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
        """Opens stores on one file, each with its own thread and connection."""
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
    sync = await store._call(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    assert sync == 2
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def count_commits(store: SqliteStore) -> list[str]:
    """The store connection's commits from now on, whichever thread runs them.

    A COMMIT, or a put fast-path statement (``INSERT INTO put_rows``), its own transaction.
    SQLite traces that statement again for each step of its trigger, with the same expanded
    text (its values), so a repeat of the previous text is the same statement.
    """
    commits: list[str] = []

    def trace(statement: str) -> None:
        text = statement.strip().upper()
        fast = text.startswith("INSERT INTO PUT_ROWS") and commits[-1:] != [statement]
        if text == "COMMIT" or fast:
            commits.append(statement)

    assert store._conn is not None
    store._conn.set_trace_callback(trace)
    return commits


async def test_puts_share_commits_and_are_committed_when_they_resolve(
    store: SqliteStore,
) -> None:
    """Concurrent puts are group-committed, and each is visible to others once it resolves."""
    commits = count_commits(store)
    puts = await asyncio.gather(*(store.put(message(f"k{i}")) for i in range(64)))
    assert all(p.created for p in puts)
    assert 1 <= len(commits) <= 8
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 64
    finally:
        conn.close()


async def test_job_outcomes_and_claims_share_commits_with_puts(store: SqliteStore) -> None:
    """Successes, claims and puts sent together are written in one transaction, one commit."""
    await asyncio.gather(*(store.put(message(f"a{i}")) for i in range(16)))
    claims = await store.claim("q", "w", limit=16, lease=60)
    assert len(claims) == 16
    commits = count_commits(store)
    done, more, puts = await asyncio.gather(
        asyncio.gather(*(store.succeed(c.job.id, "w") for c in claims)),
        store.claim("q", "w", limit=16, lease=60),
        asyncio.gather(*(store.put(message(f"b{i}")) for i in range(16))),
    )
    assert all(done)
    assert all(p.created for p in puts)
    assert len(more) in (0, 16)  # the claim may come before or after the puts in the group
    assert len(commits) <= 2
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


async def test_puts_queued_during_a_commit_are_taken_by_the_thread(store: SqliteStore) -> None:
    """Puts made while the thread commits are committed next by it, without a hand-over."""
    handed: list[int] = []
    ops = store._ops  # the thread waits on this queue: hand-overs must still reach it

    class Counted:
        def put(self, item: Any) -> None:
            handed.append(len(item))
            ops.put(item)

        def get(self) -> Any:
            return ops.get()

    store._ops = Counted()  # type: ignore[assignment]
    committing = threading.Event()
    release = threading.Event()
    assert store._conn is not None

    def trace(statement: str) -> None:
        # Runs on the store's thread, inside the first group's statement: hold it there.
        if statement.startswith("INSERT INTO put_rows") and not committing.is_set():
            committing.set()
            release.wait(5)

    store._conn.set_trace_callback(trace)
    first = asyncio.create_task(store.put(message("first")))
    assert await asyncio.to_thread(committing.wait, 5)
    later = [asyncio.create_task(store.put(message(f"later{i}"))) for i in range(5)]
    await asyncio.sleep(0.01)  # the loop runs while the thread holds the connection
    release.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(first, *later)
    assert all(p.created for p in results)
    assert handed == [1]  # one hand-over: the later puts were taken by the thread itself


async def test_checkpoints_run_off_the_commit_thread(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL is copied into the database by the checkpointer, not by SQLite during commits."""
    assert store._conn is not None
    (pages,) = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()
    assert pages == sqlite_store.BACKSTOP_PAGES  # far above what this test writes
    empty = await asyncio.to_thread(os.path.getsize, store.path)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_BYTES", 64 << 10)
    body = bytes(range(256)) * 64  # 16 KB: a commit of 16 puts is over the 64 KB asked for
    await asyncio.gather(*(store.put(message(f"k{i}", body=body)) for i in range(16)))
    for _ in range(500):  # up to 5 s: the checkpoint runs on its own thread
        if await asyncio.to_thread(os.path.getsize, store.path) >= empty + 16 * len(body):
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the database file never received the WAL's pages")


async def test_closing_the_store_stops_the_checkpointer(tmp_path: Path) -> None:
    """close() ends the checkpoint thread as well as the store's own."""
    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    checkpointer = store._checkpointer
    assert checkpointer is not None and checkpointer._thread.is_alive()
    await store.close()
    assert not checkpointer._thread.is_alive()


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


async def test_claims_are_read_back_on_the_thread_when_the_loop_cannot(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose read-back on the event loop's connection fails reads on the thread."""
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
        assert await store._call(count_calls) == 6  # the last 3 calls of each bucket
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

    def fill(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await store._call(fill)
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
