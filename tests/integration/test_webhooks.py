"""Webhooks end to end: ``patchbay serve`` with a handlers module, deliveries sent signed."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from patchbay.webhooks.testing import signed_request
from tests.conftest import Served, Start, free_port

SECRET = "It's a Secret to Everybody"

HANDLERS = '''
"""Handlers under test: each run appends a line to runs.jsonl, which the test reads."""
import json, os, pathlib, time
from patchbay.webhooks import Context, Retry, Router

router = Router()
HERE = pathlib.Path(__file__).parent


def record(name: str, ctx: Context, **extra) -> None:
    line = {"handler": name, "key": ctx.delivery_key, "event": ctx.event, "attempt": ctx.attempt}
    line.update(extra)
    with (HERE / "runs.jsonl").open("a") as out:
        out.write(json.dumps(line) + "\\n")


@router.on("pull_request.opened")
def steady(ctx: Context) -> None:
    record("steady", ctx)


@router.on("pull_request.*", source="gh")
async def flaky(ctx: Context) -> None:
    record("flaky", ctx)
    if ctx.attempt == 1:
        raise RuntimeError("first attempts always fail here")


@router.on("issues.opened")
def broken(ctx: Context) -> None:
    record("broken", ctx)
    if not (HERE / "fixed").exists():
        raise ValueError("broken until the file 'fixed' exists")


@router.on("push", ordering_key=lambda ctx: ctx.payload["repository"]["full_name"])
def ordered(ctx: Context) -> None:
    record("ordered", ctx, seq=ctx.payload["seq"], started=time.time())
    if ctx.payload["seq"] == 1 and ctx.attempt == 1:
        raise Retry(after=0.5)
    time.sleep(0.05)
    record("ordered-done", ctx, seq=ctx.payload["seq"], done=time.time())
'''


def configure(tmp_path: Path, extra: str = "") -> Path:
    """Write the handlers module and a settings file with one GitHub source."""
    (tmp_path / "hooks_under_test.py").write_text(HANDLERS)
    config = tmp_path / "patchbay.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [server]
            state_dir = "{tmp_path / "var"}"

            [jobs]
            poll_interval = 0.1
            lease = 5

            [webhooks]
            retry_delays = [0.2, 0.2]
            jitter = 0

            [webhooks.sources.gh]
            provider = "github"
            secrets = ["{SECRET}"]
            handlers = "hooks_under_test:router"
            """
        )
        + extra
    )
    return config


def runs(tmp_path: Path) -> list[dict[str, Any]]:
    """Every handler run so far."""
    path = tmp_path / "runs.jsonl"
    if not path.exists():
        return []
    # A handler may be halfway through its line: only whole lines count.
    whole = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in whole.splitlines()]


def wait_for(check: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll until ``check()`` holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def deliver(
    server: Served,
    event: str,
    payload: dict[str, Any],
    delivery: str | None = None,
    secret: str = SECRET,
) -> httpx.Response:
    """POST a signed GitHub delivery."""
    request = signed_request(
        "github", secret, json.dumps(payload).encode(), event=event, delivery_id=delivery
    )
    return httpx.post(
        server.url + "/hooks/gh", content=request.body, headers=request.headers, timeout=10
    )


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``patchbay`` in the test's directory."""
    return subprocess.run(
        [sys.executable, "-m", "patchbay", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_new_user_story(serve: Start, tmp_path: Path) -> None:
    """Send with the CLI, see handlers run, break one, watch retries and the dead letter, replay."""
    config = configure(tmp_path)
    server = serve(["--config", str(config)])
    payload = tmp_path / "pr.json"
    payload.write_text(json.dumps({"action": "opened", "number": 1}))
    sent = cli(
        tmp_path,
        "hooks",
        "send",
        "--provider",
        "github",
        "--secret",
        SECRET,
        "--event",
        "pull_request",
        "--delivery",
        "d-1",
        str(payload),
        server.url + "/hooks/gh",
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("200")
    assert json.loads(sent.stdout.splitlines()[1]) == {
        "delivery": "d-1",
        "duplicate": False,
        "runs": 2,
    }
    wait_for(lambda: {r["handler"] for r in runs(tmp_path)} >= {"steady", "flaky"})

    issue = tmp_path / "issue.json"
    issue.write_text(json.dumps({"action": "opened"}))
    args = ["--provider", "github", "--secret", SECRET, "--event", "issues"]
    assert (
        cli(tmp_path, "hooks", "send", *args, str(issue), server.url + "/hooks/gh").returncode == 0
    )
    wait_for(lambda: sum(r["handler"] == "broken" for r in runs(tmp_path)) == 3)
    wait_for(
        lambda: "broken" in cli(tmp_path, "hooks", "dead", "list", "--config", str(config)).stdout
    )
    time.sleep(0.5)
    assert sum(r["handler"] == "broken" for r in runs(tmp_path)) == 3  # 1 + 2 retries, then dead
    dead = cli(tmp_path, "hooks", "dead", "list", "--config", str(config)).stdout
    assert "ValueError: broken until the file 'fixed' exists" in dead

    (tmp_path / "fixed").touch()
    replayed = cli(tmp_path, "hooks", "dead", "retry", "--config", str(config), "--source", "gh")
    assert replayed.stdout.strip() == "1 dead run will run again"
    wait_for(lambda: sum(r["handler"] == "broken" for r in runs(tmp_path)) == 4)
    wait_for(
        lambda: (
            "no dead runs" in cli(tmp_path, "hooks", "dead", "list", "--config", str(config)).stdout
        )
    )
    stats = json.loads(cli(tmp_path, "hooks", "stats", "--config", str(config), "--json").stdout)
    assert stats == {"pending": 0, "running": 0, "succeeded": 3, "dead": 0}  # three runs
    live = server.get("/v1/stats").json()["webhooks"]["sources"]["gh"]["events"]
    assert live["pull_request.opened"]["received"] == 1
    assert live["issues.opened"]["dead"] == 1

    kept = cli(tmp_path, "hooks", "purge", "--config", str(config), "--older-than", "1h")
    assert kept.stdout.strip() == "0 deliveries purged"
    purged = cli(tmp_path, "hooks", "purge", "--config", str(config), "--older-than", "0s")
    assert purged.stdout.strip() == "2 deliveries purged"  # both runs' deliveries had ended
    stats = json.loads(cli(tmp_path, "hooks", "stats", "--config", str(config), "--json").stdout)
    assert stats == {"pending": 0, "running": 0, "succeeded": 0, "dead": 0}
    bad = cli(tmp_path, "hooks", "purge", "--config", str(config), "--older-than", "soon")
    assert bad.returncode != 0 and "is not a duration" in bad.stderr


def test_retry_runs_only_the_failed_handler(serve: Start, tmp_path: Path) -> None:
    """A handler failing on its first attempt succeeds on retry; its sibling runs exactly once."""
    server = serve(["--config", str(configure(tmp_path))])
    assert deliver(server, "pull_request", {"action": "opened"}, "once").status_code == 200
    wait_for(lambda: [r["attempt"] for r in runs(tmp_path) if r["handler"] == "flaky"] == [1, 2])
    time.sleep(0.6)  # past every retry delay: nothing else may run
    assert [(r["handler"], r["attempt"]) for r in runs(tmp_path)].count(("steady", 1)) == 1
    assert sum(r["handler"] == "steady" for r in runs(tmp_path)) == 1
    assert sum(r["handler"] == "flaky" for r in runs(tmp_path)) == 2


def test_duplicates_store_nothing_new(serve: Start, tmp_path: Path) -> None:
    """A redelivery answers 200, says it is a duplicate, and runs no handler again."""
    server = serve(["--config", str(configure(tmp_path))])
    first = deliver(server, "pull_request", {"action": "closed"}, "dup-1")
    again = deliver(server, "pull_request", {"action": "closed"}, "dup-1")
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["duplicate"] is False
    assert again.json() == {"delivery": "dup-1", "duplicate": True, "runs": 0}
    wait_for(lambda: len(runs(tmp_path)) >= 2)  # flaky: attempt 1 fails, attempt 2 succeeds
    time.sleep(0.5)
    assert [r["attempt"] for r in runs(tmp_path)] == [1, 2]


def test_duplicates_racing_through_two_workers_give_one_row(serve: Start, tmp_path: Path) -> None:
    """Copies of one delivery racing through two worker processes store one delivery."""
    server = serve(["--config", str(configure(tmp_path)), "--workers", "2"])
    keys = [f"race-{n}" for n in range(20)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda key: deliver(server, "pull_request", {"action": "labeled"}, key),
                [k for k in keys for _ in range(8)],
            )
        )
    assert {a.status_code for a in answers} == {200}
    assert sum(not a.json()["duplicate"] for a in answers) == len(keys)
    with sqlite3.connect(tmp_path / "var" / "jobs.db") as db:
        stored = db.execute("SELECT key, COUNT(*) FROM messages GROUP BY key").fetchall()
    assert sorted(stored) == sorted((key, 1) for key in keys)


def test_ordering_key_holds_while_the_first_is_retried(serve: Start, tmp_path: Path) -> None:
    """Three pushes to one repository complete in order though the first needs a retry."""
    server = serve(["--config", str(configure(tmp_path))])
    for seq in (1, 2, 3):
        payload = {"repository": {"full_name": "o/r"}, "seq": seq}
        assert deliver(server, "push", payload, f"push-{seq}").status_code == 200
    wait_for(lambda: sum(r["handler"] == "ordered-done" for r in runs(tmp_path)) == 3)
    done = [r["seq"] for r in runs(tmp_path) if r["handler"] == "ordered-done"]
    assert done == [1, 2, 3]
    started = [(r["seq"], r["attempt"]) for r in runs(tmp_path) if r["handler"] == "ordered"]
    assert started == [(1, 1), (1, 2), (2, 1), (3, 1)]


def test_bad_deliveries_get_clear_errors(serve: Start, tmp_path: Path) -> None:
    """Every refusal has the one JSON error shape and the right status; nothing is stored."""
    server = serve(["--config", str(configure(tmp_path, "max_body_bytes = 4096\n"))])
    good = signed_request("github", SECRET, b'{"action":"opened"}', event="pull_request")
    url = server.url + "/hooks/gh"

    def post(body: bytes, **headers: str) -> httpx.Response:
        return httpx.post(url, content=body, headers={**good.headers, **headers}, timeout=10)

    assert httpx.get(url).status_code == 405
    assert httpx.post(server.url + "/hooks/nope", content=b"{}").status_code == 404
    tampered = post(good.body.replace(b"opened", b"closed"))
    assert tampered.status_code == 401
    assert tampered.json()["error"]["detail"]["reason"] == "bad_signature"
    assert post(good.body, **{"X-Hub-Signature-256": "sha256=zz"}).status_code in (400, 401)
    assert post(good.body, **{"Content-Type": "text/plain"}).status_code == 415
    big = signed_request("github", SECRET, b'{"a":"' + b"x" * 5000 + b'"}', event="push")
    assert httpx.post(url, content=big.body, headers=big.headers).status_code == 413
    for response in (tampered, post(good.body, **{"Content-Type": "text/plain"})):
        assert set(response.json()["error"]) == {"code", "message", "detail"}
    assert runs(tmp_path) == []
    rejected = server.get("/v1/stats").json()["webhooks"]["sources"]["gh"]["rejected"]
    assert rejected["bad_signature"] == 1


def test_oversized_body_is_refused_before_it_is_read(serve: Start, tmp_path: Path) -> None:
    """A Content-Length over the limit gets 413 at once, without the server waiting for it."""
    server = serve(["--config", str(configure(tmp_path, "max_body_bytes = 4096\n"))])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_store_down_gives_503_with_retry_after(serve: Start, tmp_path: Path) -> None:
    """When the job store cannot commit, intake answers 503 and Retry-After, never 2xx."""
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    config = configure(tmp_path, "")
    config.write_text(config.read_text().replace("[jobs]\n", f'[jobs]\nstore = "{closed}"\n'))
    server = serve(["--config", str(config)])
    response = deliver(server, "pull_request", {"action": "opened"}, "down-1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "store_unavailable"


def test_unique_delivery_ids(serve: Start, tmp_path: Path) -> None:
    """Deliveries without a given id get distinct generated ones from the signer."""
    server = serve(["--config", str(configure(tmp_path))])
    keys = {
        deliver(server, "ping", {"zen": str(uuid.uuid4())}).json()["delivery"] for _ in range(3)
    }
    assert len(keys) == 3


def test_unknown_handlers_module_stops_start_with_a_clear_message(tmp_path: Path) -> None:
    """A handlers module that cannot be imported is a configuration error naming the key."""
    config = configure(tmp_path)
    config.write_text(config.read_text().replace("hooks_under_test:router", "nowhere:router"))
    done = cli(tmp_path, "serve", "--config", str(config), "-p", str(free_port()))
    assert done.returncode == 2
    assert "webhooks.sources.gh.handlers: cannot import 'nowhere'" in done.stderr


def test_replay_one_delivery_one_run_or_a_filtered_set(serve: Start, tmp_path: Path) -> None:
    """``hooks replay`` re-runs a delivery's runs, one run by id, or what the filters select."""
    config = configure(tmp_path)
    server = serve(["--config", str(config)])
    assert deliver(server, "pull_request", {"action": "opened"}, "r-1").status_code == 200
    assert deliver(server, "issues", {"action": "opened"}, "r-2").status_code == 200
    wait_for(lambda: len(runs(tmp_path)) == 6)  # steady, flaky x2, broken x3 (then dead)
    options = ("--config", str(config))

    def count(handler: str) -> int:
        return sum(r["handler"] == handler for r in runs(tmp_path))

    assert cli(tmp_path, "hooks", "replay", *options).returncode != 0  # no selection: refused
    by_delivery = cli(tmp_path, "hooks", "replay", *options, "--source", "gh", "--delivery", "r-1")
    assert by_delivery.stdout.strip() == "2 runs will run again"
    wait_for(lambda: count("steady") == 2 and count("flaky") == 4)

    listed = cli(tmp_path, "hooks", "dead", "list", *options).stdout
    run_id = listed.split("run ")[1].split()[0]
    one = cli(tmp_path, "hooks", "replay", *options, run_id)
    assert one.stdout.strip() == "1 run will run again"
    wait_for(lambda: count("broken") == 6)

    wait_for(lambda: "broken" in cli(tmp_path, "hooks", "dead", "list", *options).stdout)
    filtered = cli(tmp_path, "hooks", "replay", *options, "--status", "succeeded", "--since", "1h")
    assert filtered.stdout.strip() == "2 runs will run again"
    wait_for(lambda: count("steady") == 3)
    dropped = cli(tmp_path, "hooks", "dead", "drop", *options, "--yes")
    assert dropped.stdout.strip() == "1 dead run dropped"
    assert "no dead runs" in cli(tmp_path, "hooks", "dead", "list", *options).stdout
