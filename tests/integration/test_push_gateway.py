"""``POST /v1/push`` end to end: stored, sent by the server to the FCM emulator, results kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from patchbay.emulators.fcm import FcmEmulator
from patchbay.emulators.keys import service_account
from patchbay.emulators.serve import serve_in_thread
from tests.conftest import Start, free_port


@pytest.fixture
def fcm(tmp_path: Path) -> Iterator[tuple[FcmEmulator, Path]]:
    """The FCM emulator on a loopback port (any well-formed assertion) and a service account."""
    emulator = FcmEmulator(latency=0.005)
    with serve_in_thread(emulator) as url:
        info, _ = service_account(f"{url}/token")
        account = tmp_path / "sa.json"
        account.write_text(json.dumps(info))
        config = tmp_path / "patchbay.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [server]
                state_dir = "{tmp_path / "var"}"

                [jobs]
                poll_interval = 0.1
                lease = 2

                [push]
                service_account = "{account}"
                fcm_url = "{url}"
                iid_url = "{url}"
                """
            )
        )
        yield emulator, config


def wait_done(url: str, ident: int, seconds: float = 30) -> dict[str, Any]:
    """Poll ``GET /v1/push/{id}`` until the send is done."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state: dict[str, Any] = httpx.get(f"{url}/v1/push/{ident}").json()
        if state["state"] != "pending":
            return state
        time.sleep(0.1)
    raise AssertionError(f"push {ident} not done: {state}")


def test_many_tokens_are_sent_and_reported(serve: Start, fcm: tuple[FcmEmulator, Path]) -> None:
    """1,200 tokens in three chunks: each valid one gets one message; the dead are reported."""
    emulator, config = fcm
    emulator.token_rule = lambda token: "unregistered" if token.endswith("7") else "valid"
    server = serve(["--config", str(config)])
    tokens = [f"device-{n}" for n in range(1200)]
    message = {"notification": {"title": "Hi", "body": "there"}, "data": {"k": "v"}}
    accepted = httpx.post(f"{server.url}/v1/push", json={"message": message, "tokens": tokens})
    assert accepted.status_code == 202, accepted.text
    state = wait_done(server.url, accepted.json()["id"])
    assert state["state"] == "done"
    dead = {t for t in tokens if t.endswith("7")}
    assert state["outcomes"] == {"sent": 1200 - len(dead), "dead_token": len(dead)}
    assert {r["target"] for r in state["results"] if r["outcome"] == "dead_token"} == dead
    delivered = [m.target for m in emulator.ledger]
    assert sorted(delivered) == sorted(set(tokens) - dead)
    stats = server.get("/v1/stats").json()["push"]
    assert stats["outcomes"] == {"sent": 1200 - len(dead), "dead_token": len(dead)}


def test_bad_requests_are_refused_before_storing(
    serve: Start, fcm: tuple[FcmEmulator, Path]
) -> None:
    """Two targets, a non-string data value, no JSON: 400 naming the problem, nothing sent."""
    emulator, config = fcm
    server = serve(["--config", str(config)])
    url = f"{server.url}/v1/push"
    two = httpx.post(url, json={"message": {"token": "a", "topic": "b"}})
    assert two.status_code == 400
    assert "message" in two.json()["error"]["message"]
    data = httpx.post(url, json={"message": {"token": "a", "data": {"n": 1}}})
    assert data.status_code == 400
    assert "message.data" in data.json()["error"]["message"]
    assert httpx.post(url, content=b"{nope").status_code == 400
    assert httpx.get(url).status_code == 405
    assert httpx.get(f"{url}/999").status_code == 404
    time.sleep(0.3)
    assert emulator.send_requests == 0


def test_a_stored_send_survives_a_kill(tmp_path: Path, fcm: tuple[FcmEmulator, Path]) -> None:
    """A push accepted just before kill -9 is sent after the restart (and its lease expires)."""
    emulator, config = fcm
    emulator.latency = 0.3
    port = free_port()
    command = [sys.executable, "-m", "patchbay", "serve", "--config", str(config), "-p", str(port)]
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("the server did not start")

    first = start()
    tokens = [f"t{n}" for n in range(40)]
    accepted = httpx.post(
        url + "/v1/push", json={"message": {"data": {"a": "b"}}, "tokens": tokens}
    )
    assert accepted.status_code == 202
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    second = start()
    try:
        state = wait_done(url, accepted.json()["id"], seconds=60)
    finally:
        second.terminate()
        second.wait(15)
    assert state["outcomes"] == {"sent": 40}
    assert {m.target for m in emulator.ledger} == set(tokens)  # at least once each
