"""The blocking façade: plain scripts, code inside a running loop, other threads."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from patchbay.emulators.fcm import FcmEmulator
from patchbay.push import BlockingSender, InvalidMessage, Message, Notification, connect
from tests.unit.push.conftest import BASE, PROJECT, settings


@pytest.fixture
def account_file(tmp_path: Path, account: tuple[dict[str, str], dict[str, str]]) -> Path:
    """The test service account, as the file an operator would configure."""
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(account[0]))
    return path


@pytest.fixture
def emulator(account: tuple[dict[str, str], dict[str, str]]) -> FcmEmulator:
    """An emulated FCM on real time (the blocking API runs on its own loop's clock)."""
    return FcmEmulator(project_id=PROJECT, public_keys=account[1])


@pytest.fixture
def blocking(emulator: FcmEmulator, account_file: Path) -> Iterator[BlockingSender]:
    """A blocking sender on the emulator, closed after the test."""
    dead: list[tuple[str, str]] = []
    sender = BlockingSender.from_settings(
        settings(service_account=str(account_file)),
        transport=httpx.ASGITransport(app=emulator),
        on_dead_token=lambda token, reason: dead.append((token, reason)),
    )
    sender.dead = dead  # type: ignore[attr-defined]
    yield sender
    sender.close()


def test_plain_sync_code(blocking: BlockingSender, emulator: FcmEmulator) -> None:
    """send, notify, send_many, send_multicast and subscribe from ordinary code."""
    emulator.set_token_state("gone", "unregistered")
    result = blocking.send(Message(token="a", notification=Notification(title="Hi")))
    assert result.outcome == "sent"
    pyfcm = blocking.notify("b", "Title", "Body", data={"k": "v"}, priority="high")
    assert pyfcm.outcome == "sent"
    assert emulator.sent_to("b")[0].message["data"] == {"k": "v"}
    many = list(
        blocking.send_many(
            (Message(token=f"m{i}", data={"i": str(i)}) for i in range(300)), ordered=True
        )
    )
    assert [r.index for r in many] == list(range(300))
    multi = list(blocking.send_multicast(Message(data={"x": "y"}), ["c", "gone", "d"]))
    assert Counter(r.outcome for r in multi) == {"sent": 2, "dead_token": 1}
    assert blocking.dead == [("gone", "UNREGISTERED")]  # type: ignore[attr-defined]
    report = blocking.subscribe("news", ["a", "b", "gone"])
    assert (report.succeeded, [f.error for f in report.failures]) == (2, ["NOT_FOUND"])
    assert blocking.unsubscribe("news", ["a"]).ok
    assert emulator.topics["news"] == {"b"}


def test_topics_through_either_api(blocking: BlockingSender, emulator: FcmEmulator) -> None:
    """subscribe/unsubscribe take ``api``: one request per token by default, IID batches on ask."""
    tokens = [f"t{i}" for i in range(1500)]
    assert blocking.subscribe("news", iter(tokens)).succeeded == 1500
    assert emulator.topic_requests == 1500
    assert blocking.unsubscribe("news", iter(tokens), api="iid").succeeded == 1500
    assert emulator.topic_requests == 1502
    assert "news" not in emulator.topics
    report = blocking.subscribe("news", ["a", "a"], api="registrations")
    assert (report.succeeded, emulator.topics["news"]) == (2, {"a"})


def test_input_is_read_in_the_callers_thread(blocking: BlockingSender) -> None:
    """A thread-bound sqlite cursor works: the loop thread never touches the iterable."""
    db = sqlite3.connect(":memory:")  # check_same_thread: other threads may not use it
    db.execute("create table devices (token text)")
    db.executemany("insert into devices values (?)", [(f"t{i}",) for i in range(250)])
    rows = db.execute("select token from devices order by rowid")
    results = list(blocking.send_multicast(Message(data={"k": "v"}), (token for (token,) in rows)))
    assert Counter(r.outcome for r in results) == {"sent": 250}
    db.close()


def test_errors_in_the_input_reach_the_caller(blocking: BlockingSender) -> None:
    """An exception raised by the caller's iterable ends the stream in the caller."""

    def tokens() -> Iterator[str]:
        yield "a"
        raise ValueError("bad file")

    with pytest.raises(ValueError, match="bad file"):
        list(blocking.send_multicast(Message(data={"k": "v"}), tokens()))
    assert blocking.send(Message(token="still-works")).outcome == "sent"


def test_abandoned_iteration_stops_cleanly(blocking: BlockingSender, emulator: FcmEmulator) -> None:
    """Breaking out of a results loop cancels the rest; the sender stays usable."""
    results = blocking.send_multicast(Message(data={"k": "v"}), (f"t{i}" for i in range(100_000)))
    for _ in zip(range(5), results, strict=False):
        pass
    results.close()  # type: ignore[attr-defined]
    assert emulator.send_requests < 1000
    assert blocking.send(Message(token="after")).outcome == "sent"


async def test_inside_a_running_event_loop(blocking: BlockingSender) -> None:
    """Called from a coroutine (PyFCM's 'event loop is already running' bug) it still works."""
    assert blocking.send(Message(token="from-a-coroutine")).outcome == "sent"


def test_from_a_thread_that_runs_its_own_loop(blocking: BlockingSender) -> None:
    """A worker thread with its own running loop may call it; so may many threads at once."""
    outcomes: list[str] = []

    async def worker(i: int) -> None:
        outcomes.append(blocking.notify(f"thread-{i}", "t", "b").outcome)

    threads = [threading.Thread(target=asyncio.run, args=(worker(i),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["sent"] * 8


def test_bad_messages_raise_in_the_caller(blocking: BlockingSender, emulator: FcmEmulator) -> None:
    """Local checks raise InvalidMessage in the calling thread, before any request."""
    with pytest.raises(InvalidMessage, match=r"^message\.data\.n: values must be strings"):
        blocking.notify("t", "x", data={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(InvalidMessage, match=r"^message: needs a target"):
        blocking.send(Message(data={"k": "v"}))
    assert emulator.send_requests == 0


def test_close_is_idempotent_and_final(emulator: FcmEmulator, account_file: Path) -> None:
    """close() twice is fine; a call after close is refused; the loop thread is gone."""
    sender = BlockingSender.from_settings(
        settings(service_account=str(account_file)), transport=httpx.ASGITransport(app=emulator)
    )
    thread = sender._thread
    sender.close()
    sender.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        sender.send(Message(token="t"))


def test_connect_for_scripts(emulator: FcmEmulator, account_file: Path) -> None:
    """connect(path) is a context manager; settings pass through as keywords."""
    with pytest.raises(TypeError, match="concurency"):
        # The settings are the [push] dataclass: a misspelt keyword fails loudly.
        connect(account_file, concurency=3)
    with connect(account_file, fcm_url=BASE, project_id="") as fcm:
        assert fcm.sender.project_id == PROJECT
        assert fcm.sender.settings.fcm_url == BASE
