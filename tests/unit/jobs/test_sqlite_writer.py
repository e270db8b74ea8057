"""The SQLite store's writer: its wire, its groups and its checkpoints, run in this process."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from patchbay.jobs import sqlite_writer
from patchbay.jobs.model import NewJob
from patchbay.jobs.sqlite_writer import (
    CallOp,
    Frames,
    Op,
    PutOp,
    StopOp,
    SucceedOp,
    Writer,
    encode,
    pack,
    portable,
    serve,
    unpack,
)
from patchbay.jobs.store import Row


def row(key: str, body: bytes = b"{}", jobs: tuple[NewJob, ...] = (NewJob("q", "t"),)) -> Row:
    """A put's row, with one job unless told otherwise."""
    return Row("s", key, body, "{}", time.time(), jobs)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    """A writer on a fresh file, closed afterwards."""
    writer = Writer(str(tmp_path / "jobs.db"))
    yield writer
    writer.close()


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    """Frames split at every byte, or several in one piece, decode to the values sent."""
    values: list[Any] = [(1, b"x" * 5000), ("two",), ([(3, None, None)], ["q"])]
    stream = b"".join(encode(v) for v in values)
    frames = Frames()
    out = [v for i in range(len(stream)) for v in frames.feed(stream[i : i + 1])]
    assert out == values
    assert Frames().feed(stream) == values


def test_every_operation_crosses_the_wire_unchanged() -> None:
    """Pack and unpack give back an equal operation of each kind."""
    ops: list[Op] = [
        PutOp(1, Row("s", "k", b"body", "{}", 5.5, (NewJob("q", "t", "key", 2.0),))),
        SucceedOp(2, 7, "owner", None, 6.5),
        CallOp(3, "execute", ("SELECT ?", (1,), "rows"), write=False),
        StopOp(4),
    ]
    assert [unpack(value) for value in Frames().feed(b"".join(map(pack, ops)))] == ops


def test_an_exception_that_cannot_cross_stays_readable() -> None:
    """An exception pickle cannot carry becomes a RuntimeError naming it."""

    class Local(Exception):
        pass

    plain = ValueError("bad")
    assert portable(plain) is plain
    crossed = portable(Local("odd"))
    assert isinstance(crossed, RuntimeError)
    assert str(crossed) == "Local: odd"


def test_a_group_of_puts_is_one_statement(writer: Writer) -> None:
    """Puts alone are committed by one INSERT INTO put_rows, their ids in order."""
    statements: list[str] = []
    writer._connection().set_trace_callback(statements.append)
    outcomes, woken, stop = writer.round([PutOp(i, row(f"k{i}")) for i in range(5)])
    assert [seq for seq, _, _ in outcomes] == [0, 1, 2, 3, 4]
    assert [put for _, put, _ in outcomes] == [(i, True) for i in range(1, 6)]
    assert woken == {"q"} and not stop
    top = [s for s in statements if s.startswith("INSERT INTO put_rows")]
    assert len(set(top)) == 1  # traced again for each trigger step, with the same text


def test_puts_without_jobs_are_a_plain_insert_that_a_stored_key_aborts(writer: Writer) -> None:
    """Puts without jobs skip the trigger; a stored key in the group still writes none of it."""
    statements: list[str] = []
    writer._connection().set_trace_callback(statements.append)
    outcomes, woken, _ = writer.round([PutOp(i, row(f"k{i}", jobs=())) for i in range(3)])
    assert [put for _, put, _ in outcomes] == [(1, True), (2, True), (3, True)]
    assert woken == set()
    assert not any("put_rows" in s for s in statements)
    assert any(s.startswith("INSERT INTO messages") for s in statements)
    outcomes, _, _ = writer.round([PutOp(3, row("new", jobs=())), PutOp(4, row("k1", jobs=()))])
    assert [put for _, put, _ in outcomes] == [(4, True), (2, False)]
    conn = sqlite3.connect(writer.path)
    try:
        keys = conn.execute("SELECT id, key FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()
    assert keys == [(1, "k0"), (2, "k1"), (3, "k2"), (4, "new")]


def test_a_bad_write_fails_alone_in_its_group(writer: Writer) -> None:
    """A write that raises fails by itself; the rest of its group is committed."""
    bad = CallOp(1, "execute", ("INSERT INTO nowhere VALUES (1)", (), "rowcount"), write=True)
    outcomes, _, _ = writer.round([PutOp(0, row("a")), bad, PutOp(2, row("b"))])
    errors = {seq: exc for seq, _, exc in outcomes}
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], sqlite3.OperationalError)


def test_operations_sent_during_a_commit_form_the_next_group(writer: Writer) -> None:
    """While the writer commits, what arrives waits in the socket and is the next group."""
    committing, release = threading.Event(), threading.Event()

    def hold(statement: str) -> None:
        if statement.startswith("INSERT INTO put_rows") and not committing.is_set():
            committing.set()
            release.wait(5)

    writer._connection().set_trace_callback(hold)
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=serve, args=(theirs, writer))
    thread.start()
    try:
        ours.sendall(pack(PutOp(0, row("first"))))
        assert committing.wait(5)
        ours.sendall(b"".join(pack(PutOp(i, row(f"later{i}"))) for i in range(1, 6)))
        time.sleep(0.05)
        release.set()
        frames = Frames()
        answers: list[tuple[list[Any], list[str]]] = []
        ours.settimeout(5)
        while sum(len(outcomes) for outcomes, _ in answers) < 6:
            answers += frames.feed(ours.recv(1 << 16))
        ours.sendall(pack(StopOp(6)))
        answers += frames.feed(ours.recv(1 << 16))
    finally:
        release.set()
        thread.join(5)
        ours.close()
        theirs.close()
    groups = [[seq for seq, _, _ in outcomes] for outcomes, _ in answers]
    assert groups == [[0], [1, 2, 3, 4, 5], [6]]
    assert not thread.is_alive()  # the stop ended it (joined above)


def test_serve_returns_when_the_server_end_closes(writer: Writer) -> None:
    """End of file on the socket (the server is gone) ends the writer's loop."""
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=serve, args=(theirs, writer))
    thread.start()
    ours.sendall(pack(PutOp(0, row("a"))))
    ours.close()
    thread.join(5)
    assert not thread.is_alive()
    theirs.close()
    conn = sqlite3.connect(writer.path)
    try:  # what was sent before the end was still committed
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    finally:
        conn.close()


def test_checkpoints_run_off_the_commit_path(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL is copied into the database by the checkpointer, not by SQLite during commits."""
    (pages,) = writer._connection().execute("PRAGMA wal_autocheckpoint").fetchone()
    assert pages == sqlite_writer.BACKSTOP_PAGES  # far above what this test writes
    empty = os.path.getsize(writer.path)
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_BYTES", 64 << 10)
    body = bytes(range(256)) * 64  # 16 KB: a commit of 16 puts is over the 64 KB asked for
    writer.round([PutOp(i, row(f"k{i}", body)) for i in range(16)])
    for _ in range(500):  # up to 5 s: the checkpoint runs on its own thread
        if os.path.getsize(writer.path) >= empty + 16 * len(body):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the database file never received the WAL's pages")


def test_closing_the_writer_stops_the_checkpointer(tmp_path: Path) -> None:
    """close() ends the checkpoint thread as well."""
    writer = Writer(str(tmp_path / "jobs.db"))
    assert writer._checkpointer._thread.is_alive()
    writer.close()
    assert not writer._checkpointer._thread.is_alive()
